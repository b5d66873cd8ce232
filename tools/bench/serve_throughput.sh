#!/usr/bin/env bash
# serve_throughput.sh: served vs offline throughput on the same requests (same seed).
# Alternates, ROUNDS times: offline `llmctl bench` at --max-num-seqs C; `llmctl serve` driven
# by `llmctl bench --endpoint` at --max-concurrency C; and, when LLAMA_SERVER and GGUF are
# given (tools/bench/llama_server_peer.sh builds them), llama.cpp's llama-server with C slots
# (f32 KV cache) driven by the same client. Prints each run's output tokens/s and the medians.
#
#   tools/bench/serve_throughput.sh MODEL_DIR [CONCURRENCY=8] [ROUNDS=3]
#   env: THREADS (2), REQUESTS (32), IN ("64 256"), OUT ("64 256"), LLAMA_SERVER, GGUF
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1; C=${2:-8}; ROUNDS=${3:-3}
THREADS=${THREADS:-2}; REQUESTS=${REQUESTS:-32}
read -r IN_MIN IN_MAX <<< "${IN:-64 256}"; read -r OUT_MIN OUT_MAX <<< "${OUT:-64 256}"
BIN=build/llmctl; PORT=8124; LPORT=8125
WORK=(--num-requests "$REQUESTS" --min-input "$IN_MIN" --max-input "$IN_MAX"
      --min-output "$OUT_MIN" --max-output "$OUT_MAX" --json)
tps() { python3 -c "import json,sys; d=json.load(sys.stdin); print(round(d[sys.argv[1]]['output_tokens_per_s'], 1))" "$1"; }
wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return; sleep 0.2; done; echo "server on :$1 did not start" >&2; exit 1; }

declare -a off srv lsv
for r in $(seq "$ROUNDS"); do
  off+=("$($BIN bench --model "$MODEL" --skip-latency --max-num-seqs "$C" --threads "$THREADS" "${WORK[@]}" 2>/dev/null | tps throughput)")
  $BIN serve --model "$MODEL" --port $PORT --threads "$THREADS" --max-num-seqs "$C" 2>/dev/null & pid=$!
  wait_up $PORT
  srv+=("$($BIN bench --endpoint http://127.0.0.1:$PORT --model "$MODEL" --max-concurrency "$C" "${WORK[@]}" | tps served)")
  kill -TERM $pid; wait $pid
  if [[ -n "${LLAMA_SERVER:-}" && -n "${GGUF:-}" ]]; then
    "$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port $LPORT -np "$C" -c $((C * 2048)) -t "$THREADS" -tb "$THREADS" \
      -ctk f32 -ctv f32 >/dev/null 2>&1 & lpid=$!
    wait_up $LPORT
    lsv+=("$($BIN bench --endpoint http://127.0.0.1:$LPORT --model "$MODEL" --max-concurrency "$C" "${WORK[@]}" | tps served)")
    kill -TERM $lpid; wait $lpid || true
  fi
  echo "round $r: offline ${off[-1]}  llmctl-serve ${srv[-1]}  llama-server ${lsv[-1]:-n/a}  (output tok/s)"
done
python3 - "${off[*]}" "${srv[*]}" "${lsv[*]:-}" <<'PY'
import statistics as st, sys
off, srv = [list(map(float, a.split())) for a in sys.argv[1:3]]
lsv = list(map(float, sys.argv[3].split())) if sys.argv[3].strip() else []
mo, ms = st.median(off), st.median(srv)
print(f"median output tok/s: offline {mo:.1f}, llmctl serve {ms:.1f} (served/offline {ms / mo:.2f})", end="")
if lsv:
    ml = st.median(lsv)
    print(f", llama-server {ml:.1f} (llmctl serve / llama-server {ms / ml:.2f})")
else:
    print()
PY
