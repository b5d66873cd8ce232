#!/usr/bin/env python3
"""Forward-pass throughput: `llmctl eval --data` vs the same work in plain PyTorch (HF
transformers' LlamaForCausalLM on the same model directory), same machine, same threads.

    .venv/bin/python tools/bench/eval_throughput.py [--preset minimind2-small] [--threads 2]

Both sides score the same token windows ([bos] text [eos] stream cut into --seq-len
windows, batches of --batch-size) with log-softmax in fp32 and report predicted tokens/s.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "llmctl"))
    ap.add_argument("--preset", default="minimind2-small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()

    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    data = os.path.join(ROOT, "dataset", "demo", "heldout.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        tok, model = os.path.join(tmp, "tok"), os.path.join(tmp, "model")
        run([a.bin, "train-tokenizer", "--data", data, "--out", tok, "--vocab-size", "6400"])
        run([a.bin, "init", "--preset", a.preset, "--tokenizer", tok, "--out", model])

        out = json.loads(run([a.bin, "eval", "--model", model, "--data", data, "--json",
                              "--seq-len", str(a.seq_len), "--batch-size", str(a.batch_size),
                              "--max-tokens", str(a.max_tokens), "--threads", str(a.threads),
                              "--dtype", a.dtype]))
        ours = out["tokens_per_s"]

        sp = spm.SentencePieceProcessor(model_file=os.path.join(tok, "tokenizer.model"))
        stream = []
        with open(data, encoding="utf-8") as f:
            for line in f:
                stream += [1] + sp.encode(json.loads(line)["text"]) + [2]
                if len(stream) >= a.max_tokens + a.seq_len:
                    break
        n_win = a.max_tokens // a.seq_len
        windows = torch.tensor(stream[: n_win * a.seq_len]).view(n_win, a.seq_len)
        dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval()
        t0 = time.perf_counter()
        nll, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, n_win, a.batch_size):
                w = windows[i:i + a.batch_size]
                logits = hf(w[:, :-1]).logits.float()
                lp = torch.log_softmax(logits, -1).gather(-1, w[:, 1:].unsqueeze(-1))
                nll -= lp.sum().item()
                n += lp.numel()
        ref = n / (time.perf_counter() - t0)

    print(json.dumps({"preset": a.preset, "dtype": a.dtype, "threads": a.threads, "seq_len": a.seq_len,
                      "batch_size": a.batch_size, "llmctl_tokens_per_s": round(ours, 1),
                      "pytorch_tokens_per_s": round(ref, 1), "ratio": round(ours / ref, 3),
                      "llmctl_ppl": out["perplexity"], "pytorch_ppl": float(torch.exp(torch.tensor(nll / n)))}))


if __name__ == "__main__":
    sys.exit(main())
