#!/usr/bin/env python3
"""Training throughput: `llmctl pretrain` vs plain PyTorch (tools/bench/train_reference.py,
minimind's model and loop) in one go, same torch build, same threads, same shapes.

    .venv/bin/python tools/bench/train_throughput.py [--preset minimind2-small] [--threads 2] \
        [--batch-size 8] [--seq-len 512] [--steps 6] [--dtype bf16] [--device cpu]

Prints tokens/s of both, the ratio, and model-FLOPs utilisation (MFU) of each against the
bf16 (or f32) matmul throughput measured here in the same run. The first step of each side
is a warm-up and is not timed. The two sides alternate --repeats times and the medians are
compared (single runs on a shared 2-core machine vary by +-10%).

Model FLOPs per trained token: 6 * (matmul parameters, the tied lm_head included) +
6 * layers * seq_len * q_dim (causal attention: QK^T and PV, forward and backward, half
of the square counted).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p.stdout


def matmul_peak(torch, dtype, threads, device):
    """Best GFLOP/s over the model's matmul shapes (forward and weight-gradient forms)."""
    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in [(4096, 512, 1408), (4096, 1408, 512), (4096, 512, 512), (512, 4096, 1408)]:
        a = torch.randn(m, k, dtype=dtype, device=device)
        b = torch.randn(k, n, dtype=dtype, device=device)
        for _ in range(2):
            a @ b
        reps = 10
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_token(cfg, seq_len):
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim", h // cfg["num_attention_heads"])
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    matmul_params = layers * per_layer + h * cfg["vocab_size"]
    return 6 * matmul_params + 6 * layers * seq_len * q


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "llmctl"))
    ap.add_argument("--preset", default="minimind2-small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import torch

    config = os.path.join(ROOT, "configs", a.preset + ".json")
    cfg = json.load(open(config))
    common = ["--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len), "--threads", str(a.threads)]

    tokens = a.batch_size * a.seq_len
    refs, oursl = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tok = os.path.join(tmp, "tok")
        data = os.path.join(ROOT, "dataset", "demo", "train.jsonl")
        run([a.bin, "train-tokenizer", "--data", data, "--out", tok, "--vocab-size", str(cfg["vocab_size"])])
        for r in range(a.repeats):
            refs.append(json.loads(run([sys.executable, os.path.join(ROOT, "tools", "bench", "train_reference.py"),
                                        "--config", config, "--steps", str(a.steps), "--dtype", a.dtype,
                                        "--device", a.device, *common]))["tokens_per_s"])
            out = os.path.join(tmp, f"run{r}")
            run([a.bin, "pretrain", "--data", data, "--tokenizer", tok, "--preset", a.preset, "--out", out,
                 "--max-steps", str(a.steps), "--dtype", a.dtype, "--device", a.device, "--log-every", "1", *common])
            with open(os.path.join(out, "metrics.jsonl")) as f:
                steps = [json.loads(line) for line in f]
            timed = steps[1:] or steps
            # tokens_per_s per line covers exactly that step: total tokens / total time.
            oursl.append(tokens * len(timed) / sum(tokens / s["tokens_per_s"] for s in timed))
    ours, ref = statistics.median(oursl), {"tokens_per_s": statistics.median(refs)}

    peak = matmul_peak(torch, torch.bfloat16 if a.dtype == "bf16" else torch.float32, a.threads, a.device)
    fpt = flops_per_token(cfg, a.seq_len)
    res = {"preset": a.preset, "dtype": a.dtype, "device": a.device, "threads": a.threads,
           "batch": [a.batch_size, a.seq_len], "torch": torch.__version__,
           "llmctl_tokens_per_s": round(ours, 1), "reference_tokens_per_s": round(ref["tokens_per_s"], 1),
           "ratio": round(ours / ref["tokens_per_s"], 3), "matmul_peak_gflops": round(peak, 1),
           "gflop_per_token": round(fpt / 1e9, 4),
           "llmctl_mfu": round(ours * fpt / 1e9 / peak, 3),
           "reference_mfu": round(ref["tokens_per_s"] * fpt / 1e9 / peak, 3),
           "llmctl_runs": [round(x, 1) for x in oursl], "reference_runs": [round(x, 1) for x in refs]}
    if a.json:
        print(json.dumps(res))
        return
    print(f"{a.preset} {a.dtype} on {a.device}, batch {a.batch_size} x {a.seq_len}, {a.threads} threads, torch {torch.__version__}")
    print(f"  llmctl pretrain        {res['llmctl_tokens_per_s']:>9.1f} tokens/s   MFU {res['llmctl_mfu']:.1%}")
    print(f"  PyTorch (minimind way) {res['reference_tokens_per_s']:>9.1f} tokens/s   MFU {res['reference_mfu']:.1%}")
    print(f"  ratio {res['ratio']:.2f}x   ({a.dtype} matmul peak measured here: {peak:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
