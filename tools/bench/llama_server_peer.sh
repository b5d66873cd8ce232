#!/usr/bin/env bash
# llama_server_peer.sh: a peer to benchmark llmctl's OpenAI-compatible server against.
# Builds llama.cpp's C++ llama-server from the llama.cpp copy vendored in the llama-cpp-python
# sdist on PyPI, converts an HF Llama model directory (what `llmctl init/pretrain/sft` write) to
# GGUF with that copy's convert_hf_to_gguf.py, and prints the llama-server command line with N
# parallel slots. A benchmarking helper only: not used by the build, the tests or CI. Uses PyPI
# and Debian only.
#
#   tools/bench/llama_server_peer.sh MODEL_DIR [options]
#
#   --slots N           parallel slots, llama-server -np (default 4)
#   --ctx-per-slot N    context per slot; llama-server gets -c N*slots (default 1024)
#   --threads N         -t and -tb (default 2)
#   --port P            (default 8090)
#   --outtype T         f32 | f16 | bf16 | q8_0 (default f32)
#   --out FILE          the GGUF to write (default $LLMCTL_PEER_CACHE/gguf/NAME-HASH-T.gguf)
#   --smoke             also start the server, check /v1/completions (plain and streamed),
#                       print single-request decode tokens/s for 128 tokens, and stop it
#   --run               finally exec llama-server in the foreground (Ctrl-C to stop)
#
# Environment:
#   LLMCTL_PEER_CACHE          cache folder (default ~/.cache/llmctl-peer): venv, sdist, build
#   LLAMA_CPP_PYTHON_VERSION   the sdist to use (default 0.3.36: llama.cpp commit 0c1e570)
#   PEER_JOBS                  build jobs (default 1); the build runs under nice -n 19 (~8 min
#                              of 2 cores for -j2 on this machine kind)
#   PEER_TORCH                 the converter imports torch. "reuse" (default): borrow the torch
#                              already in the repo's .venv (tools/install-deps.sh puts the same
#                              torch==2.11.0 there) via a .pth file; "pypi": pip-install
#                              torch==2.11.0 into the peer venv (the PyPI wheel, several GB).
#
# Idempotent: each step is skipped when its output is there and up to date, so a second run
# only prints the command. Example:
#   build/llmctl init --preset minimind2-small --tokenizer runs/demo/tokenizer --out /tmp/mm2s --seed 1
#   tools/bench/llama_server_peer.sh /tmp/mm2s --slots 4 --smoke
#
# Caveats for a fair comparison (see the printed notes too): llama-server's defaults are f16 KV
# cache, flash attention on (auto) on CPU, prompt cache on (cache_prompt + --cache-ram), and
# sampling defaults taken from the GGUF (general.sampling.temp/top_p from generation_config.json,
# plus top_k 40, min_p 0.05): send explicit sampling parameters in every request.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${LLMCTL_PEER_CACHE:-$HOME/.cache/llmctl-peer}
VER=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
JOBS=${PEER_JOBS:-1}
TORCH_MODE=${PEER_TORCH:-reuse}

SLOTS=4 CTX_PER_SLOT=1024 THREADS=2 PORT=8090 OUTTYPE=f32 OUT="" SMOKE=0 RUN=0 MODEL=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
  case "$1" in
    --slots) SLOTS=$2; shift 2 ;;
    --ctx-per-slot) CTX_PER_SLOT=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --outtype) OUTTYPE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --run) RUN=1; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "unknown option $1" >&2; usage 2 ;;
    *) [[ -z "$MODEL" ]] || usage 2; MODEL=$1; shift ;;
  esac
done
[[ -n "$MODEL" ]] || usage 2
MODEL=$(cd "$MODEL" && pwd)
for f in config.json model.safetensors tokenizer.model; do
  [[ -f "$MODEL/$f" ]] || { echo "error: $MODEL/$f missing (want an HF Llama dir)" >&2; exit 1; }
done

say() { printf '[peer] %s\n' "$*" >&2; }
NICE=(nice -n 19)

# --- Debian tools --------------------------------------------------------------------------
need=()
for t in cmake g++ python3 curl; do command -v "$t" >/dev/null || need+=("$t"); done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  echo "error: missing ${need[*]}: apt-get install -y cmake g++ python3-venv curl ninja-build" >&2
  exit 1
fi
GEN=(-G "Unix Makefiles"); command -v ninja >/dev/null && GEN=(-G Ninja)

mkdir -p "$CACHE"/{dl,src,gguf}
SRC=$CACHE/src/llama_cpp_python-$VER
LCPP=$SRC/vendor/llama.cpp
BUILD=$CACHE/build-$VER
BIN=$BUILD/bin/llama-server
VENV=$CACHE/venv
PY=$VENV/bin/python

# --- 1. the sdist from PyPI ----------------------------------------------------------------
TARBALL=$CACHE/dl/llama_cpp_python-$VER.tar.gz
if [[ ! -f "$TARBALL" ]]; then
  [[ -x "$PY" ]] || python3 -m venv "$VENV"
  say "downloading llama-cpp-python==$VER (sdist) from PyPI"
  "${NICE[@]}" "$VENV/bin/pip" download -q --no-deps --no-binary :all: \
    "llama-cpp-python==$VER" -d "$CACHE/dl"
fi
if [[ ! -f "$LCPP/convert_hf_to_gguf.py" ]]; then
  say "unpacking $TARBALL"
  rm -rf "$SRC"; tar -xzf "$TARBALL" -C "$CACHE/src"
fi

# --- 2. llama-server from the vendored llama.cpp ------------------------------------------
# llama-cpp-python's own wheel build adds llama.cpp as a subproject with tools and server off
# and installs only the shared libraries, so `pip install llama-cpp-python` has no
# llama-server; build the vendored tree directly, server target only. No web UI: its assets
# would come from npm or a download, neither of which is available here.
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF)
STAMP=$BUILD/.peer-stamp
want="$VER ${CMAKE_FLAGS[*]}"
if [[ ! -x "$BIN" || "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
  say "building llama-server (-j$JOBS, nice 19; about 8 min with -j2 on 2 cores)"
  t0=$(date +%s)
  "${NICE[@]}" cmake -S "$LCPP" -B "$BUILD" "${GEN[@]}" "${CMAKE_FLAGS[@]}" >"$BUILD.configure.log" 2>&1 \
    || { tail -30 "$BUILD.configure.log" >&2; exit 1; }
  CMAKE_BUILD_PARALLEL_LEVEL=$JOBS "${NICE[@]}" cmake --build "$BUILD" --target llama-server \
    -j "$JOBS" >"$BUILD.build.log" 2>&1 || { tail -30 "$BUILD.build.log" >&2; exit 1; }
  echo "$want" >"$STAMP"
  say "built $BIN in $(( $(date +%s) - t0 ))s"
fi
say "llama-server: $BIN ($("$BIN" --version 2>&1 | grep -m1 '^version'))"

# --- 3. the converter's Python environment -------------------------------------------------
# The converter's pins (transformers, numpy, sentencepiece, protobuf, gguf) minus torch, whose
# requirement line points at PyTorch's own index. The converter imports the gguf-py vendored
# beside it, not the gguf wheel: PyPI's gguf 0.19.0 lacks LazyChunkedTensor, which it needs.
REQ_SRC=$LCPP/requirements/requirements-convert_legacy_llama.txt
REQ=$VENV/peer-requirements.txt
VSTAMP=$VENV/.peer-stamp
[[ -x "$PY" ]] || python3 -m venv "$VENV"
vwant="$VER $TORCH_MODE $(sha256sum "$REQ_SRC" | cut -c1-16)"
if [[ "$(cat "$VSTAMP" 2>/dev/null)" != "$vwant" ]] || ! "$PY" -c 'import torch, transformers, sentencepiece' 2>/dev/null; then
  grep -v -E '^\s*(#|-r|--)|^\s*$' "$REQ_SRC" >"$REQ"
  say "installing the converter's requirements into $VENV: $(tr '\n' ' ' <"$REQ")"
  "${NICE[@]}" "$VENV/bin/pip" install -q -r "$REQ"
  PURELIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$PURELIB/zz-llmctl-peer-torch.pth"
  REPO_SP=""
  if [[ "$TORCH_MODE" == reuse && -x "$ROOT/.venv/bin/python" ]]; then
    REPO_SP=$("$ROOT/.venv/bin/python" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null || true)
  fi
  if [[ -n "$REPO_SP" ]]; then
    # appended after the venv's own site-packages, so the converter's pins still win
    echo "$REPO_SP" >"$PURELIB/zz-llmctl-peer-torch.pth"
    say "torch: reusing $REPO_SP"
  else
    say "torch: installing torch==2.11.0 from PyPI into $VENV (large download)"
    "${NICE[@]}" "$VENV/bin/pip" install -q "torch==2.11.0"
  fi
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' >&2
  echo "$vwant" >"$VSTAMP"
fi

# --- 4. HF dir -> GGUF ---------------------------------------------------------------------
if [[ -z "$OUT" ]]; then
  tag=$(printf '%s' "$MODEL" | sha256sum | cut -c1-8)
  OUT=$CACHE/gguf/$(basename "$MODEL")-$tag-$OUTTYPE.gguf
fi
fresh=1
[[ -f "$OUT" ]] || fresh=0
for f in config.json model.safetensors tokenizer.model tokenizer_config.json generation_config.json; do
  [[ -f "$MODEL/$f" && "$MODEL/$f" -nt "$OUT" ]] && fresh=0
done
if ((!fresh)); then
  say "converting $MODEL -> $OUT ($OUTTYPE)"
  (cd "$LCPP" && env -u NO_LOCAL_GGUF "${NICE[@]}" "$PY" convert_hf_to_gguf.py "$MODEL" \
     --outtype "$OUTTYPE" --outfile "$OUT.tmp" >"$OUT.log" 2>&1) \
    || { tail -30 "$OUT.log" >&2; rm -f "$OUT.tmp"; exit 1; }
  mv "$OUT.tmp" "$OUT"
fi
say "gguf: $OUT ($(du -h "$OUT" | cut -f1))"

CTX=$((SLOTS * CTX_PER_SLOT))
CMD=("$BIN" -m "$OUT" --host 127.0.0.1 --port "$PORT" -np "$SLOTS" -c "$CTX"
     -t "$THREADS" -tb "$THREADS")

# --- 5. optional smoke test ----------------------------------------------------------------
if ((SMOKE)); then
  LOG=$CACHE/smoke-$PORT.log
  say "smoke: starting ${CMD[*]}"
  "${CMD[@]}" >"$LOG" 2>&1 &
  SPID=$!
  trap 'kill "$SPID" 2>/dev/null || true' EXIT
  URL=http://127.0.0.1:$PORT
  for _ in $(seq 1 120); do
    curl -sf "$URL/health" >/dev/null 2>&1 && break
    kill -0 "$SPID" 2>/dev/null || { tail -20 "$LOG" >&2; exit 1; }
    sleep 0.5
  done
  curl -sf "$URL/health" >/dev/null || { echo "error: server did not come up, see $LOG" >&2; exit 1; }
  H=(-sf -H 'Content-Type: application/json')
  curl "${H[@]}" "$URL/v1/completions" -d '{"prompt":"hello","max_tokens":16}' \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("[peer] /v1/completions ok:", d["usage"], repr(d["choices"][0]["text"][:40]))'
  curl "${H[@]}" -N "$URL/v1/completions" -d '{"prompt":"hello","max_tokens":16,"stream":true}' \
    | python3 -c '
import json, sys
ev = [l[6:] for l in sys.stdin.read().splitlines() if l.startswith("data: ")]
assert ev and ev[-1] == "[DONE]", ev[-1:]
last = json.loads(ev[-2])
print("[peer] stream ok:", len(ev) - 1, "events, finish_reason", last["choices"][0]["finish_reason"])'
  curl "${H[@]}" "$URL/tokenize" -d '{"content":"hello world 12345"}' \
    | python3 -c 'import json,sys; print("[peer] /tokenize \"hello world 12345\":", json.load(sys.stdin)["tokens"])'
  for _ in 1 2 3; do
    curl "${H[@]}" "$URL/v1/completions" -d '{"prompt":"hello","max_tokens":128,"temperature":0,"ignore_eos":true,"cache_prompt":false}' \
      | python3 -c 'import json,sys; t=json.load(sys.stdin)["timings"]; print("[peer] decode 128 tokens, 1 request, -t '"$THREADS"': %.1f tok/s (%.2f ms/token), prompt %.1f ms" % (t["predicted_per_second"], t["predicted_per_token_ms"], t["prompt_ms"]))'
  done
  kill "$SPID"; wait "$SPID" 2>/dev/null || true; trap - EXIT
  say "smoke: ok (server log: $LOG)"
fi

cat <<EOF

llama-server with $SLOTS slots of $CTX_PER_SLOT tokens each (-c is the total, split evenly across -np slots):

  ${CMD[*]}

notes: KV cache is f16 by default (add -ctk f32 -ctv f32 to match an f32 engine); flash attention
is on by default on CPU (-fa off to disable); send explicit temperature/top_k/top_p/min_p in each
request (the server defaults come from the GGUF: temp 0.7, top_p 0.9, top_k 40, min_p 0.05);
prompt caching is on: send "cache_prompt": false, or start with --cache-ram 0, for cold prompts;
use -t equal to the cores left free: spinning threads collapse when the 2 cores are shared.
EOF

if ((RUN)); then exec "${CMD[@]}"; fi
