#!/usr/bin/env python3
"""The plain-PyTorch training step that `llmctl pretrain` is measured against.

The model is written the way minimind's model_minimind.py writes it (RMSNorm computed in
fp32, precomputed RoPE tables, repeat_kv before SDPA, SiLU-gated MLP, tied embeddings), the
loop the way train_pretrain.py runs it (bf16 autocast, per-token cross-entropy times a
loss mask, AdamW, cosine LR, global-norm clipping at 1.0). Random token ids stand in for
data: the step costs the same whatever the ids are.

    .venv/bin/python tools/bench/train_reference.py --config configs/minimind2-small.json \
        --batch-size 8 --seq-len 512 --steps 6 --threads 2

Prints one JSON object: tokens_per_s (steps after --warmup), step times, final loss.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rope_tables(head_dim, max_len, theta):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(max_len).float(), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv, self.d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        hid = c["hidden_size"]
        self.q_proj = nn.Linear(hid, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(hid, self.kv * self.d, bias=False)
        self.v_proj = nn.Linear(hid, self.kv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, hid, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.d)
        k = self.k_proj(x).view(B, T, self.kv, self.d)
        v = self.v_proj(x).view(B, T, self.kv, self.d)
        c, s = cos[:T].unsqueeze(1), sin[:T].unsqueeze(1)  # [T, 1, D]
        q = (q * c + rotate_half(q) * s).to(v.dtype)
        k = (k * c + rotate_half(k) * s).to(v.dtype)
        rep = self.h // self.kv  # repeat_kv, as minimind does before SDPA
        k = k[:, :, :, None, :].expand(B, T, self.kv, rep, self.d).reshape(B, T, self.h, self.d)
        v = v[:, :, :, None, :].expand(B, T, self.kv, rep, self.d).reshape(B, T, self.h, self.d)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        hid, inter = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(hid, inter, bias=False)
        self.up_proj = nn.Linear(hid, inter, bias=False)
        self.down_proj = nn.Linear(inter, hid, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class MiniMind(nn.Module):
    def __init__(self, c, max_len):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Block(c) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied
        cos, sin = rope_tables(c["head_dim"], max_len, c["rope_theta"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for name, p in self.named_parameters():  # HF-style init, as llmctl's
            if "norm" not in name:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, ids):
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h, self.cos, self.sin)
        return self.lm_head(self.norm(h))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/minimind2-small.json")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config) as f:
        c = json.load(f)
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    dev = torch.device(a.device)
    model = MiniMind(c, a.seq_len).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    ids = torch.randint(0, c["vocab_size"], (a.batch_size, a.seq_len + 1), device=dev)
    x, y = ids[:, :-1], ids[:, 1:]
    mask = torch.ones_like(y, dtype=torch.float32)
    times, loss_v = [], 0.0
    for step in range(a.steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = 5e-4 * (0.1 + 0.45 * (1 + math.cos(math.pi * step / a.steps)))
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1), reduction="none")
            loss = (loss * mask.view(-1)).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_v = loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    timed = times[a.warmup:] or times
    tokens = a.batch_size * a.seq_len
    print(json.dumps({"tokens_per_s": tokens * len(timed) / sum(timed), "step_s": timed, "loss": loss_v,
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
