#!/usr/bin/env python3
"""A model trained elsewhere, imported by llmctl: HF transformers trains a minimind2-small-shaped
LlamaForCausalLM (the shape of an llmctl preset) on the demo corpus (bf16 autocast, AdamW, warmup + cosine) and saves it with
save_pretrained; the directory (plus the demo tokenizer) then goes through
`llmctl quantize` / `llmctl eval` like any downloaded model. Used on the lent GPU machine by
tools/device/hf_import_quality.sh; runs (slowly) on CPU with --device cpu for a smoke test.

  python3 tools/device/hf_import_quality.py --out /tmp/hf --seconds 90 --device cuda
  python3 tools/device/hf_import_quality.py --out /tmp/hf --preset minimind2 --steps 620 --lr 1e-3
"""
import argparse
import json
import math
import os
import shutil
import time

import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "runs", "demo", "tokenizer"))
    ap.add_argument("--data", default=os.path.join(ROOT, "dataset", "demo", "train.jsonl"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=float, default=90, help="training time budget")
    ap.add_argument("--steps", type=int, default=2500, help="schedule length (stops earlier at --seconds)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--preset", default="minimind2-small", help="configs/<preset>.json gives the shape")
    ap.add_argument("--small", action="store_true", help="a 2-layer 128-wide model (CPU smoke test)")
    args = ap.parse_args()
    torch.manual_seed(0)

    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.tokenizer, "tokenizer.model"))
    ids = []
    for line in open(args.data, encoding="utf-8"):
        ids += sp.encode(json.loads(line)["text"]) + [sp.eos_id()]
    n = (len(ids) - 1) // args.seq
    data = torch.tensor(ids[: n * args.seq + 1])
    print("tokens", len(ids), "windows", n, flush=True)

    if args.small:
        shape = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4, head_dim=32)
    else:
        preset = json.load(open(os.path.join(ROOT, "configs", args.preset + ".json")))
        shape = {k: preset[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads", "head_dim")}
    cfg = LlamaConfig(vocab_size=6400, num_key_value_heads=2, max_position_embeddings=2048, rope_theta=1e6,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape)
    model = LlamaForCausalLM(cfg).to(args.device)
    decay = [p for n_, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n_]
    no_decay = [p for n_, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n_)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = 100

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, args.steps - warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    g = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=g)
    t0 = time.time()
    step = 0
    while step < args.steps and time.time() - t0 < args.seconds:
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step)
        rows = order[(torch.arange(args.batch) + step * args.batch) % n]
        x = torch.stack([data[r * args.seq:(r + 1) * args.seq] for r in rows.tolist()]).to(args.device)
        y = torch.stack([data[r * args.seq + 1:(r + 1) * args.seq + 1] for r in rows.tolist()]).to(args.device)
        with torch.autocast(device_type="cuda" if args.device.startswith("cuda") else "cpu", dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 200 == 0:
            print("step", step, "loss %.3f" % loss.item(), "%.0f s" % (time.time() - t0), flush=True)
    print("trained", step, "steps, %.1f epochs, loss %.3f, %.0f s" % (step * args.batch / n, loss.item(), time.time() - t0))
    model.to("cpu").save_pretrained(args.out, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(args.tokenizer, f)):
            shutil.copy(os.path.join(args.tokenizer, f), args.out)


if __name__ == "__main__":
    main()
