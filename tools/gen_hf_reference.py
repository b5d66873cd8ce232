#!/usr/bin/env python3
"""Build tiny random Hugging Face reference models for llmctl's parity tests.

Each model is created with `transformers` from a config (no download), gets
seeded random weights that are deliberately *non-trivial* (RMSNorm weights
away from 1, biases away from 0, weights large enough that logits are peaked),
and is written with ``save_pretrained(safe_serialization=True)``. A missing
bias, a missing q/k norm, a wrong head_dim or a wrong RoPE theta in llmctl then
changes the log-probs well beyond the test tolerance.

Usable as a module (``build(name, out_dir)``, ``build_all(root)``, ``CONFIGS``)
or as a script::

    python tools/gen_hf_reference.py OUT_ROOT [NAME ...]

which writes OUT_ROOT/NAME/{config.json,generation_config.json,model.safetensors}.
"""
import argparse
import math
import os
import sys

VOCAB = 300
HIDDEN = 64
LAYERS = 2
BOS_ID = 1
EOS_ID = 2
PAD_ID = 0
EMBED_STD = 0.3

# name -> (model class name, config class name, config kwargs, seed)
CONFIGS = {
    # GQA (4 query heads, 2 kv heads), tied input/output embeddings.
    "llama_gqa_tied": ("LlamaForCausalLM", "LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=160,
        tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5,
        max_position_embeddings=512), 1),
    # Untied lm_head, q/k/v/o biases, MHA, a different RoPE theta and eps.
    "llama_untied_bias": ("LlamaForCausalLM", "LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
        tie_word_embeddings=False, attention_bias=True, rope_theta=500000.0,
        rms_norm_eps=1e-6, max_position_embeddings=256), 2),
    # Untied lm_head with gate/up/down biases (mlp_bias) and head_dim != hidden/heads.
    "llama_mlp_bias": ("LlamaForCausalLM", "LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=96,
        tie_word_embeddings=False, mlp_bias=True, rope_theta=10000.0,
        rms_norm_eps=1e-5, max_position_embeddings=256), 3),
    # Qwen2: q/k/v bias (no o bias), GQA, tied.
    "qwen2_gqa": ("Qwen2ForCausalLM", "Qwen2Config", dict(
        num_attention_heads=8, num_key_value_heads=2, intermediate_size=192,
        tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=512), 4),
    # Qwen3: per-head q_norm/k_norm, explicit head_dim (24) != hidden/heads (16), untied.
    "qwen3_headdim": ("Qwen3ForCausalLM", "Qwen3Config", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, intermediate_size=128,
        tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=512), 5),
    # Llama 3.1-style RoPE scaling (llama3 rope type) with a short original context, so
    # most frequencies are scaled or blended.
    "llama3_rope_scaling": ("LlamaForCausalLM", "LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_position_embeddings=512,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16)), 6),
    # Mistral: Llama layout with a sliding window (longer than the test sequences).
    "mistral_window": ("MistralForCausalLM", "MistralConfig", dict(
        num_attention_heads=4, num_key_value_heads=1, intermediate_size=128,
        tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-5,
        max_position_embeddings=512, sliding_window=128), 7),
}


def make_config(name):
    import transformers
    _, cfg_cls, kwargs, _ = CONFIGS[name]
    kwargs = dict(kwargs)
    theta = kwargs.pop("rope_theta")
    scaling = kwargs.pop("rope_scaling", None)
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                  bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    common.update(kwargs)
    cls = getattr(transformers, cfg_cls)
    # transformers v5 keeps RoPE settings in `rope_parameters`; v4 in `rope_theta`.
    try:
        rope = dict(scaling or {"rope_type": "default"}, rope_theta=theta)
        cfg = cls(**common, rope_parameters=rope)
        rp = getattr(cfg, "rope_parameters", None)
        if not (isinstance(rp, dict) and rp.get("rope_theta") == theta):
            raise TypeError("rope_parameters not honoured")
    except TypeError:
        cfg = cls(**common, rope_theta=theta, rope_scaling=scaling)
    cfg._attn_implementation = "eager"
    return cfg


def randomize_(model, seed):
    """Seeded, non-trivial weights: norms ~U(0.5,1.5), biases ~N(0,0.2),
    linear weights ~N(0, 1/fan_in), embeddings and lm_head ~N(0, 0.3^2).

    With hidden 64 that gives logits of std ~2.5: peaked enough that argmax is
    well defined, not so peaked that everything but the top token is -60."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters()):
            if pname.endswith("norm.weight"):  # RMSNorm, incl. q_norm/k_norm
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif pname.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "embed_tokens" in pname or pname == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=g) * EMBED_STD)
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:
                raise RuntimeError(f"unexpected parameter {pname} {tuple(p.shape)}")
    return model


def make_model(name):
    import torch
    import transformers
    model_cls, _, _, seed = CONFIGS[name]
    cfg = make_config(name)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).to(torch.float32)
    randomize_(model, seed)
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()
    return model


def build(name, out_dir):
    """Create model `name` and save it (safetensors) into out_dir; returns out_dir."""
    model = make_model(name)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_all(root, names=None):
    return {n: build(n, os.path.join(root, n)) for n in (names or CONFIGS)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_root")
    ap.add_argument("names", nargs="*", help=f"subset of {list(CONFIGS)} (default: all)")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(CONFIGS)}")
    for n, d in build_all(args.out_root, args.names or None).items():
        print(f"{n}: {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
