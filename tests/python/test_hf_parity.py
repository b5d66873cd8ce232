"""Numerical parity of `llmctl eval --ids` with Hugging Face transformers.

Reference models come from tools/gen_hf_reference.py: tiny random Llama (GQA + tied;
untied + attention_bias; mlp_bias + head_dim != hidden/heads), Qwen2 (q/k/v bias, GQA)
and Qwen3 (q_norm/k_norm, head_dim 24 != 64/4), saved with save_pretrained.

HF side: fp32, eager attention, log_softmax of the logits. llmctl's JSON gives
logprobs[i] = log p(ids[i] | ids[<i]) (logprobs[0] is null) and argmax[i], the most
likely token after position i.
"""
import copy
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import gen_hf_reference as gen  # noqa: E402  (tools/ is put on sys.path by conftest)

FP32_TOL = 1e-4        # max |logprob diff| in fp32
ARGMAX_TIE = 1e-5      # argmax may differ only where the top-2 logits are this close
SEQ_LEN = 24
NAMES = list(gen.CONFIGS)


def random_ids(seed, n=SEQ_LEN, vocab=gen.VOCAB):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def hf_logits(model_dir, ids, dtype=torch.float32):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def target_logprobs(logits, ids):
    """log p(ids[i] | ids[<i]) for i >= 1 from logits of shape [T, V]."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    return torch.tensor([lp[i - 1, ids[i]].item() for i in range(1, len(ids))], dtype=torch.float64)


def llmctl_scores(llmctl_json, model_dir, ids, *extra):
    j = llmctl_json("eval", "--model", model_dir, "--ids", ",".join(map(str, ids)),
                    "--threads", 2, *extra)
    assert j["ids"] == ids
    assert len(j["logprobs"]) == len(ids) and len(j["argmax"]) == len(ids), j
    assert j["logprobs"][0] is None, "logprobs[0] must be null (no context)"
    assert all(isinstance(x, float) for x in j["logprobs"][1:]), j["logprobs"]
    return torch.tensor(j["logprobs"][1:], dtype=torch.float64), j["argmax"]


def check_argmax(got, logits):
    ref = logits.argmax(-1).tolist()
    for i, (a, b) in enumerate(zip(got, ref)):
        if a != b:
            top2 = torch.topk(logits[i], 2).values
            gap = (top2[0] - top2[1]).item()
            assert gap < ARGMAX_TIE, (
                f"argmax differs at position {i}: llmctl {a}, HF {b} (top-2 gap {gap:.3g})")


@pytest.fixture(scope="module")
def fp32_runs(hf_models, llmctl_json):
    """Memoised (ids, HF fp32 logits, llmctl fp32 logprobs, llmctl argmax) per model."""
    cache = {}

    def get(name):
        if name not in cache:
            ids = random_ids(seed=100 + NAMES.index(name))
            cache[name] = (ids, hf_logits(hf_models[name], ids),
                           *llmctl_scores(llmctl_json, hf_models[name], ids))
        return cache[name]
    return get


@pytest.mark.parametrize("name", NAMES)
def test_fp32_logprobs_match_hf(name, fp32_runs):
    ids, logits, got, argmax = fp32_runs(name)
    diff = (got - target_logprobs(logits, ids)).abs()
    assert diff.max().item() < FP32_TOL, (
        f"{name}: max |logprob diff| {diff.max().item():.3g} at position {int(diff.argmax()) + 1}")
    check_argmax(argmax, logits)


def test_fp32_long_sequence_matches_hf(hf_models, llmctl_json):
    """RoPE at larger positions (160 tokens), Qwen3 with its explicit head_dim."""
    name = "qwen3_headdim"
    ids = random_ids(seed=7, n=160)
    logits = hf_logits(hf_models[name], ids)
    got, argmax = llmctl_scores(llmctl_json, hf_models[name], ids)
    assert (got - target_logprobs(logits, ids)).abs().max().item() < FP32_TOL
    check_argmax(argmax, logits)


# Reduced-precision compute. Tolerances: bf16 keeps 8 significant bits (unit roundoff
# 2^-9 ~ 2e-3) and every weight and intermediate activation is rounded, so for logits of
# magnitude ~5-10 errors of a few 1e-2 are expected; HF's own bf16 forward on these models
# deviates from its fp32 result by up to ~0.10 (mean ~0.025). We allow max 0.3 / mean 0.08,
# i.e. ~3x HF's own bf16 noise, and additionally no more than 3x HF's error + 0.02 on the same
# ids. f16 has 11 significant bits (8x finer): HF's error is ~0.01, bound max 0.04 / mean 0.012.
# Real bugs (missing bias or norm weight, wrong RoPE theta) move log-probs by 0.08-5 here (see
# test_reference_weights_are_nontrivial), i.e. mostly above these bounds; fp32 parity above
# is the strict check, this one checks the reduced-precision path is wired and sane.
LOWP = {"bf16": (torch.bfloat16, 0.3, 0.08), "f16": (torch.float16, 0.04, 0.012)}


@pytest.mark.parametrize("name,dtype", [("llama_gqa_tied", "bf16"), ("qwen2_gqa", "bf16"),
                                        ("qwen3_headdim", "bf16"), ("qwen3_headdim", "f16")])
def test_reduced_precision_logprobs_close_to_hf(name, dtype, hf_models, llmctl_json, fp32_runs):
    tdtype, max_tol, mean_tol = LOWP[dtype]
    ids, logits, got32, _ = fp32_runs(name)
    ref = target_logprobs(logits, ids)
    hf_lowp_err = (target_logprobs(hf_logits(hf_models[name], ids, tdtype), ids) - ref).abs().max().item()
    got, _ = llmctl_scores(llmctl_json, hf_models[name], ids, "--dtype", dtype)
    diff = (got - ref).abs()
    assert diff.max().item() < max_tol, f"{name} {dtype}: max diff {diff.max().item():.3g}"
    assert diff.mean().item() < mean_tol, f"{name} {dtype}: mean diff {diff.mean().item():.3g}"
    assert diff.max().item() < 3 * hf_lowp_err + 0.02, (
        f"{name} {dtype}: llmctl error {diff.max().item():.3g} vs HF's own {hf_lowp_err:.3g}")
    # --dtype must actually change the computation (not silently run fp32)
    assert (got - got32).abs().max().item() > 1e-4, f"--dtype {dtype} gave fp32-identical results"


@pytest.mark.parametrize("wdtype", ["bfloat16", "float16"])
def test_half_precision_weights_file(wdtype, hf_models, llmctl_json, tmp_path):
    """A checkpoint stored in bf16/f16 (as most HF checkpoints are) loads exactly:
    fp32 compute on the upcast weights matches HF fp32 on the same weights."""
    name = "qwen2_gqa"
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_models[name], dtype=getattr(torch, wdtype))
    out = tmp_path / f"{name}_{wdtype}"
    model.save_pretrained(out, safe_serialization=True)
    from safetensors import safe_open
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == getattr(torch, wdtype)
    ids = random_ids(seed=300)
    logits = hf_logits(str(out), ids, torch.float32)
    got, argmax = llmctl_scores(llmctl_json, str(out), ids)
    assert (got - target_logprobs(logits, ids)).abs().max().item() < FP32_TOL
    check_argmax(argmax, logits)


def test_causal_mask_through_binary(hf_models, llmctl_json):
    """Changing the last id leaves every earlier log-prob/argmax unchanged, and a prefix
    scores the same as the same positions of the full sequence."""
    d = hf_models["llama_gqa_tied"]
    ids = random_ids(seed=400)
    ids2 = ids[:-1] + [(ids[-1] + 1) % gen.VOCAB]
    lp1, am1 = llmctl_scores(llmctl_json, d, ids)
    lp2, am2 = llmctl_scores(llmctl_json, d, ids2)
    assert (lp1[:-1] - lp2[:-1]).abs().max().item() < 1e-6
    assert am1[:-1] == am2[:-1]
    assert lp1[-1].item() != lp2[-1].item()  # the changed token itself is scored differently
    # the future cannot leak into the past: a prefix gives the same scores
    lp3, am3 = llmctl_scores(llmctl_json, d, ids[:10])
    assert (lp1[:9] - lp3).abs().max().item() < 1e-5
    assert am1[:10] == am3


def _perturbed_logprobs(model, ids, suffix, value):
    m = copy.deepcopy(model)
    hit = False
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if pname.endswith(suffix):
                p.fill_(value)
                hit = True
    if not hit:
        return None
    with torch.no_grad():
        return target_logprobs(m(torch.tensor([ids])).logits[0], ids)


@pytest.mark.parametrize("name", NAMES)
def test_reference_weights_are_nontrivial(name):
    """Self-check of the reference models: dropping any bias, norm weight or q/k norm, or
    changing RoPE theta, moves log-probs by far more than FP32_TOL, so the parity tests
    would catch llmctl ignoring them."""
    model = gen.make_model(name)
    ids = random_ids(seed=100 + NAMES.index(name))
    with torch.no_grad():
        base = target_logprobs(model(torch.tensor([ids])).logits[0], ids)
    checks = {"bias": (".bias", 0.0), "layer norms": ("layernorm.weight", 1.0),
              "final norm": ("model.norm.weight", 1.0), "q_norm": ("q_norm.weight", 1.0),
              "k_norm": ("k_norm.weight", 1.0)}
    tested = []
    for what, (suffix, value) in checks.items():
        lp = _perturbed_logprobs(model, ids, suffix, value)
        if lp is not None:
            tested.append(what)
            assert (lp - base).abs().max().item() > 100 * FP32_TOL, f"{name}: {what} is trivial"
    assert "layer norms" in tested and "final norm" in tested
    if gen.CONFIGS[name][2].get("attention_bias") or gen.CONFIGS[name][2].get("mlp_bias") \
            or name.startswith("qwen2"):
        assert "bias" in tested
    if name.startswith("qwen3"):
        assert "q_norm" in tested and "k_norm" in tested
    # RoPE theta matters too
    cfg = copy.deepcopy(model.config)
    theta = cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta
    if getattr(cfg, "rope_parameters", None):
        cfg.rope_parameters = dict(cfg.rope_parameters, rope_theta=theta * 2)
    else:
        cfg.rope_theta = theta * 2
    other = type(model)(cfg)
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        lp = target_logprobs(other(torch.tensor([ids])).logits[0], ids)
    assert (lp - base).abs().max().item() > 100 * FP32_TOL, f"{name}: rope_theta is trivial"


@pytest.mark.parametrize("name", NAMES)
def test_saved_config_has_what_llmctl_reads(name, hf_models):
    """The HF-written config.json carries the fields llmctl's parser reads (some are
    optional in HF and implied by model_type, e.g. qwen2's q/k/v bias)."""
    with open(f"{hf_models[name]}/config.json") as f:
        cfg = json.load(f)
    for key in ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                "bos_token_id", "eos_token_id"):
        assert key in cfg, key
    assert "rope_theta" in cfg or "rope_theta" in cfg.get("rope_parameters", {})
