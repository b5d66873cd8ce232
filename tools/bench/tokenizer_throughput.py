#!/usr/bin/env python3
"""Encode throughput of llmctl's byte-level BPE against HF tokenizers, same tokenizer, same text.

    .venv/bin/python tools/bench/tokenizer_throughput.py [--data dataset/demo/train.jsonl]
        [--style minimind] [--threads 1 2] [--repeat 4] [--tests-bin build/tests/llmctl_tests]

The tokenizer is trained with HF tokenizers in one of the styles of
tests/python/test_tokenizer_json.py (minimind: vocab 6400, ByteLevel; qwen2: NFC + Split
regex; llama3; gpt2) and saved as tokenizer.json. Every line of --data (its "text" field) is
one document. Both sides encode all documents twice in one process (a cold pass, then a warm
one: both keep a word cache), without special-token handling differences (the corpus has no
special tokens):
  - llmctl: Tokenizer::encode through the unit-test binary's
    TokenizerBpe.ThroughputForBenchScript, documents split over N threads;
  - HF: Tokenizer.encode_batch with RAYON_NUM_THREADS=N (1 thread: encode per document).
Token counts must agree.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

HF_BENCH = r"""
import json, sys, time, tokenizers
tok = tokenizers.Tokenizer.from_file(sys.argv[1])
docs = []
for line in open(sys.argv[2], encoding="utf-8"):
    line = line.rstrip("\n")
    docs.append(json.loads(line)["text"] if line.startswith("{") else line)
threads = int(sys.argv[3])
out = {}
for name in ("cold_s", "warm_s"):
    t0 = time.perf_counter()
    if threads == 1:
        n = sum(len(tok.encode(d, add_special_tokens=False).ids) for d in docs)
    else:
        n = sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False))
    out[name] = time.perf_counter() - t0
    out["tokens"] = n
out["bytes"] = sum(len(d.encode("utf-8")) for d in docs)
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "dataset", "demo", "train.jsonl"))
    ap.add_argument("--style", default="minimind", choices=["minimind", "qwen2", "llama3", "gpt2"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=4, help="encode the data this many times over (longer timings)")
    ap.add_argument("--tests-bin", default=os.path.join(ROOT, "build", "tests", "llmctl_tests"))
    args = ap.parse_args()

    import test_tokenizer_json as styles  # the tokenizer styles of the oracle test

    with tempfile.TemporaryDirectory() as d:
        src = args.data
        with open(src, encoding="utf-8") as f:
            data = f.read()
        args.data = os.path.join(d, "data.jsonl")
        with open(args.data, "w", encoding="utf-8") as f:
            f.write(data * args.repeat)
        t0 = time.perf_counter()
        tok, cfg = styles.build(args.style, styles.corpus())
        tok.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f)
        print(f"trained {args.style} tokenizer (vocab {tok.get_vocab_size()}) in {time.perf_counter() - t0:.1f}s; "
              f"data: {args.repeat} x {src}")
        print(f"{'':8} {'threads':>7} {'cold MB/s':>10} {'warm MB/s':>10} {'warm Mtok/s':>12}")
        for n in args.threads:
            env = dict(os.environ, RAYON_NUM_THREADS=str(n), TOKENIZERS_PARALLELISM="true")
            hf = json.loads(subprocess.run([sys.executable, "-c", HF_BENCH, os.path.join(d, "tokenizer.json"),
                                            args.data, str(n)], env=env, check=True, capture_output=True,
                                           text=True).stdout)
            p = subprocess.run([args.tests_bin, "--gtest_filter=TokenizerBpe.ThroughputForBenchScript"],
                               env=dict(os.environ, LLMCTL_TOKENIZER_BENCH=f"{d}|{args.data}|{n}"),
                               check=True, capture_output=True, text=True)
            line = next(x for x in p.stdout.splitlines() if x.startswith("LLMCTL_BENCH "))
            ours = json.loads(line[len("LLMCTL_BENCH "):])
            if ours["tokens"] != hf["tokens"]:
                sys.exit(f"token counts differ: llmctl {ours['tokens']} vs HF {hf['tokens']}")
            for name, r in (("HF", hf), ("llmctl", ours)):
                mb = r["bytes"] / 1e6
                print(f"{name:8} {n:>7} {mb / r['cold_s']:>10.2f} {mb / r['warm_s']:>10.2f} "
                      f"{r['tokens'] / r['warm_s'] / 1e6:>12.3f}")
        print(f"{ours['tokens']} tokens, {ours['bytes'] / 1e6:.1f} MB in {ours['docs']} documents")


if __name__ == "__main__":
    main()
