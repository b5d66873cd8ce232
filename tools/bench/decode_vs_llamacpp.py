#!/usr/bin/env python3
"""Batch-1 prefill and decode, llmctl against llama.cpp on the same weights, in one run.

The machine's memory bandwidth moves from hour to hour (batch-1 decode streams every weight
once per token), so the anchors in SPEC.md only compare well with runs from the same moment.
This script alternates the two sides and reports medians and their ratio:

  llmctl:    `llmctl bench --model DIR --skip-throughput --repetitions R --json` (pp512, tg128)
  llama.cpp: the llama.cpp that llama-cpp-python (in the venv) is built from, on the GGUF that
             `llmctl convert --to gguf` writes from DIR; pp512 = one 512-token batch, tg128 =
             128 single-token decodes, each a separate `Llama.eval` call (its Python overhead
             is a few microseconds of a ~3 ms step). One subprocess per round, so its thread
             pool never competes with llmctl's.

  .venv/bin/python tools/bench/decode_vs_llamacpp.py --model /tmp/mm2s --rounds 5
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LLAMA_SIDE = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=512, verbose=False)
pp, tg = [], []
for _ in range(reps + 1):  # the first round warms up
    m.reset()
    t = time.perf_counter()
    m.eval([(7 * i + 3) % 6000 + 10 for i in range(512)])
    pp.append(512 / (time.perf_counter() - t))
    m.reset()
    m.eval([1])
    tok, t = 5, time.perf_counter()
    for i in range(128):
        m.eval([tok])
        tok = (tok * 7 + 3) % 6000 + 10
    tg.append(128 / (time.perf_counter() - t))
print(json.dumps({"pp": sorted(pp[1:])[reps // 2], "tg": sorted(tg[1:])[reps // 2]}))
"""


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{p.stderr[-2000:]}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an HF model directory llmctl reads")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "llmctl"))
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"],
                    help="llmctl's weights; the GGUF is f32 or, for bf16, f16 (llama.cpp's usual half type)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repetitions", type=int, default=5, help="per round and side; the median is kept")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    ours = {"pp": [], "tg": []}
    theirs = {"pp": [], "tg": []}
    with tempfile.TemporaryDirectory() as tmp:
        gguf = os.path.join(tmp, "model.gguf")
        run([a.bin, "convert", "--model", a.model, "--to", "gguf", "--out", gguf,
             "--dtype", "f32" if a.dtype == "f32" else "f16"])
        for _ in range(a.rounds):
            r = json.loads(run([a.bin, "bench", "--model", a.model, "--threads", str(a.threads), "--dtype", a.dtype,
                                "--repetitions", str(a.repetitions), "--skip-throughput", "--json"]))
            ours["pp"].append(r["pp"]["tokens_per_s"])
            ours["tg"].append(r["tg"]["tokens_per_s"])
            r = json.loads(run([sys.executable, "-c", LLAMA_SIDE, gguf, str(a.threads), str(a.repetitions)]).strip()
                           .splitlines()[-1])
            theirs["pp"].append(r["pp"])
            theirs["tg"].append(r["tg"])
    med = lambda xs: statistics.median(xs)  # noqa: E731
    res = {"model": a.model, "dtype": a.dtype, "threads": a.threads, "rounds": a.rounds,
           "llmctl": {k: round(med(v), 1) for k, v in ours.items()},
           "llama_cpp": {k: round(med(v), 1) for k, v in theirs.items()},
           "ratio": {k: round(med(ours[k]) / med(theirs[k]), 3) for k in ours},
           "llmctl_rounds": ours, "llama_cpp_rounds": theirs}
    if a.json:
        print(json.dumps(res))
        return
    print(f"{a.model}, llmctl {a.dtype} vs llama.cpp {'F32' if a.dtype == 'f32' else 'F16'}, {a.threads} threads, "
          f"medians of {a.rounds} alternating rounds")
    for k, name in (("pp", "pp512"), ("tg", "tg128")):
        print(f"  {name}: llmctl {med(ours[k]):8.1f} tok/s   llama.cpp {med(theirs[k]):8.1f} tok/s   "
              f"ratio {res['ratio'][k]:.2f}x   (rounds: {[round(x) for x in ours[k]]} vs {[round(x) for x in theirs[k]]})")


if __name__ == "__main__":
    main()
