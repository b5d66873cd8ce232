"""End to end through the built binary: train-tokenizer -> init -> eval, the saved model in
transformers, and the error paths (exit code 1, one `llmctl: error:` line, no crash)."""
import json
import math
import os
import re
import shutil
import struct

import pytest

from conftest import (SFT_SAMPLE, TOKENIZER_DOCS, TOKENIZER_VOCAB, DEMO_TRAIN,
                      assert_clean_error, head_lines)

SUBCOMMANDS = ["train-tokenizer", "tokenize", "init", "eval", "pretrain", "sft"]
NANO = dict(model_type="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=2, head_dim=32, intermediate_size=704)


def sft_lines():
    with open(SFT_SAMPLE, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def nano(llmctl_json, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "nano"
    summary = llmctl_json("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", out,
                          "--seed", 1)
    return str(out), summary


@pytest.fixture
def broken_copy(nano, tmp_path):
    """A fresh copy of the nano model directory to damage."""
    def _copy(name="broken"):
        dst = tmp_path / name
        shutil.copytree(nano[0], dst)
        return dst
    return _copy


# ---------------------------------------------------------------- happy path

def test_train_tokenizer_outputs(tokenizer_info):
    out, summary = tokenizer_info
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    assert summary["vocab_size"] == TOKENIZER_VOCAB
    assert summary["documents"] == TOKENIZER_DOCS + sft_lines()
    assert summary["malformed_lines"] == 0
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    assert sp.vocab_size() == TOKENIZER_VOCAB


def test_init_nano_config(nano, tokenizer_dir):
    out, summary = nano
    cfg = read_json(os.path.join(out, "config.json"))
    for k, v in NANO.items():
        assert cfg[k] == v, k
    assert cfg["vocab_size"] == TOKENIZER_VOCAB
    assert cfg["tie_word_embeddings"] is True
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == 2
    gen = read_json(os.path.join(out, "generation_config.json"))
    assert gen["eos_token_id"] == 2 or gen["eos_token_id"] == [2]
    with open(os.path.join(out, "tokenizer.model"), "rb") as a, \
            open(os.path.join(tokenizer_dir, "tokenizer.model"), "rb") as b:
        assert a.read() == b.read(), "tokenizer.model not copied verbatim"
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        mine, theirs = read_json(os.path.join(out, f)), read_json(os.path.join(tokenizer_dir, f))
        for k in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template"):
            assert mine.get(k) == theirs.get(k), (f, k)
    assert summary["config"]["vocab_size"] == TOKENIZER_VOCAB


def test_init_nano_safetensors_names(nano):
    from safetensors import safe_open
    out, summary = nano
    H, L, KV, D, I, V = 256, 4, 2, 32, 704, TOKENIZER_VOCAB
    want = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H]}
    for i in range(L):
        p = f"model.layers.{i}."
        want.update({
            p + "input_layernorm.weight": [H], p + "post_attention_layernorm.weight": [H],
            p + "self_attn.q_proj.weight": [8 * D, H], p + "self_attn.k_proj.weight": [KV * D, H],
            p + "self_attn.v_proj.weight": [KV * D, H], p + "self_attn.o_proj.weight": [H, 8 * D],
            p + "mlp.gate_proj.weight": [I, H], p + "mlp.up_proj.weight": [I, H],
            p + "mlp.down_proj.weight": [H, I]})
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        assert "lm_head.weight" not in shapes, "tied embeddings: no lm_head.weight"
        assert shapes == want
        emb = f.get_tensor("model.embed_tokens.weight")
        import torch
        assert emb.dtype == torch.float32 and torch.isfinite(emb).all() and emb.std() > 0
    if "parameters" in summary:
        assert summary["parameters"] == sum(math.prod(s) for s in want.values())


def test_init_bf16_weights(llmctl_json, tokenizer_dir, tmp_path):
    import torch
    from safetensors import safe_open
    out = tmp_path / "nano_bf16"
    llmctl_json("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", out, "--dtype", "bf16")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16


def test_eval_perplexity_on_heldout(nano, heldout_slice, llmctl_json):
    out, _ = nano
    j = llmctl_json("eval", "--model", out, "--data", heldout_slice, "--seq-len", 128,
                    "--max-tokens", 1500, "--threads", 2)
    ppl = j["perplexity"]
    assert math.isfinite(ppl) and ppl > 1
    # a random model is roughly uniform over the vocabulary
    assert TOKENIZER_VOCAB / 10 <= ppl <= TOKENIZER_VOCAB * 10, ppl
    assert math.isclose(math.log(ppl), j["mean_nll"], rel_tol=1e-6)
    assert j["tokens"] > 0 and j["windows"] > 0 and j["documents"] > 0
    assert j["malformed_lines"] == 0


def test_saved_model_loads_in_transformers(nano, llmctl_json, tokenizer_dir):
    """No trust_remote_code: a stock LlamaForCausalLM; its logits agree with llmctl."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import sentencepiece as spm
    out, _ = nano
    model = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, TOKENIZER_VOCAB, (20,), generator=g).tolist()
    text = "In the beginning God created the heaven and the earth. 天地玄黄，宇宙洪荒。"
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "tokenizer.model"))
    for args, want_ids in ((["--ids", ",".join(map(str, ids))], ids), (["--text", text], sp.encode(text))):
        j = llmctl_json("eval", "--model", out, *args, "--threads", 2)
        assert j["ids"] == want_ids
        with torch.no_grad():
            logits = model(torch.tensor([want_ids])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        ref = [lp[i - 1, want_ids[i]].item() for i in range(1, len(want_ids))]
        assert j["logprobs"][0] is None
        assert max(abs(a - b) for a, b in zip(j["logprobs"][1:], ref)) < 1e-4
        top2 = torch.topk(logits, 2, dim=-1).values
        for i, (a, b) in enumerate(zip(j["argmax"], logits.argmax(-1).tolist())):
            assert a == b or (top2[i, 0] - top2[i, 1]).item() < 1e-5, i
    assert j["pieces"] == [sp.id_to_piece(i) for i in want_ids]


def test_init_overwrites_existing_model(llmctl, tokenizer_dir, tmp_path):
    """init twice into the same --out (different seeds) leaves one complete, loadable model."""
    from safetensors import safe_open
    out = tmp_path / "twice"
    tensors = []
    for seed in (1, 2):
        llmctl("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", out,
               "--seed", seed, check=True)
        with safe_open(out / "model.safetensors", "pt") as f:
            tensors.append(f.get_tensor("model.layers.0.self_attn.q_proj.weight"))
    assert not (tensors[0] == tensors[1]).all(), "second init (other seed) did not replace the weights"
    files = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
            "tokenizer.model", "tokenizer_config.json"} <= files, files
    leftovers = [f for f in files if f.startswith(".") or re.search(r"tmp|partial|~$|\.part$", f)]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    rc, stdout, err = llmctl("eval", "--model", out, "--ids", "1,5,9,400", "--json")
    assert rc == 0, err
    assert len(json.loads(stdout)["logprobs"]) == 4
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert (model.model.layers[0].self_attn.q_proj.weight.detach() == tensors[1]).all()


def test_same_seed_is_deterministic(nano, llmctl, tokenizer_dir, tmp_path):
    out = tmp_path / "again"
    llmctl("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", out, "--seed", 1, check=True)
    with open(out / "model.safetensors", "rb") as a, open(os.path.join(nano[0], "model.safetensors"), "rb") as b:
        assert a.read() == b.read()


def test_train_tokenizer_skips_malformed_lines(llmctl_json, llmctl, tmp_path):
    data = tmp_path / "mixed.jsonl"
    head_lines(DEMO_TRAIN, 40, data)
    bad = ['{"text": "unterminated string', "not json at all", '{"text": "a"} trailing',
           "[1, 2, 3]", '{"text": 5}']
    good_tail = ['{"text": "And the evening and the morning were the first day."}',
                 '{"conversations": [{"role": "user", "content": "你好"}, '
                 '{"role": "assistant", "content": "你好！"}]}']
    with open(data, "a", encoding="utf-8") as f:
        for line in bad:
            f.write(line + "\n")
        f.write("\n".join(good_tail) + "\n")
    bad_lineno = list(range(41, 41 + len(bad)))
    rc, stdout, err = llmctl("train-tokenizer", "--data", data, "--out", tmp_path / "tok",
                             "--vocab-size", 500, "--json")
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["malformed_lines"] == len(bad), (summary, err)
    assert summary["documents"] == 40 + len(good_tail)
    assert summary["vocab_size"] == 500
    for n in bad_lineno:
        assert f"mixed.jsonl:{n}" in err, f"no warning naming line {n}:\n{err}"
    for n in (1, 40, 46, 47):
        assert f"mixed.jsonl:{n}:" not in err
    assert "Traceback" not in err and "terminate called" not in err
    assert (tmp_path / "tok" / "tokenizer.model").exists()


def test_eval_data_counts_malformed_lines(nano, llmctl_json, tmp_path):
    data = tmp_path / "ho.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        f.write('{"text": "And God said, Let there be light: and there was light."}\n')
        f.write("{broken\n")
        f.write('{"text": "床前明月光，疑是地上霜。举头望明月，低头思故乡。"}\n')
    j = llmctl_json("eval", "--model", nano[0], "--data", data, "--seq-len", 64)
    assert j["malformed_lines"] == 1 and j["documents"] == 2
    assert math.isfinite(j["perplexity"]) and j["tokens"] > 0


# ---------------------------------------------------------------- help / version

def test_help_and_version(llmctl):
    rc, out, err = llmctl("--help")
    assert rc == 0 and all(s in out for s in SUBCOMMANDS), out
    rc, out, err = llmctl("--version")
    assert rc == 0 and re.search(r"\bllmctl\b.*\d+\.\d+\.\d+", out + err), out + err


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_subcommand_help(sub, llmctl):
    rc, out, err = llmctl(sub, "--help")
    assert rc == 0, err
    assert "Usage" in out and "--help" in out


# ---------------------------------------------------------------- error paths

IDS = ["--ids", "1,2,3"]


def test_error_truncated_safetensors(broken_copy, llmctl):
    d = broken_copy()
    p = d / "model.safetensors"
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
    rc, _, err = llmctl("eval", "--model", d, *IDS)
    assert_clean_error(rc, err, "model.safetensors")


def test_error_safetensors_header_longer_than_file(broken_copy, llmctl):
    d = broken_copy()
    with open(d / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", 1 << 40) + b'{"x": {}}')
    rc, _, err = llmctl("eval", "--model", d, *IDS)
    assert_clean_error(rc, err, "model.safetensors")


def test_error_safetensors_header_not_json(broken_copy, llmctl):
    d = broken_copy()
    header = b"this is not json"
    with open(d / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    rc, _, err = llmctl("eval", "--model", d, *IDS)
    assert_clean_error(rc, err, "model.safetensors")


def test_error_config_missing_hidden_size(broken_copy, llmctl):
    d = broken_copy()
    cfg = read_json(d / "config.json")
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    rc, _, err = llmctl("eval", "--model", d, *IDS)
    assert_clean_error(rc, err, "config.json", "hidden_size")


def test_error_config_not_json(broken_copy, llmctl):
    d = broken_copy()
    (d / "config.json").write_text('{"model_type": "llama", "hidden_size": 256,')
    rc, _, err = llmctl("eval", "--model", d, *IDS)
    assert_clean_error(rc, err, "config.json")


def test_error_tensor_wrong_shape(broken_copy, llmctl):
    import torch
    from safetensors.torch import load_file, save_file
    d = broken_copy()
    sd = load_file(d / "model.safetensors")
    name = "model.layers.1.self_attn.k_proj.weight"
    sd[name] = torch.zeros(32, 256)  # config needs [2 * 32, 256]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    rc, _, err = llmctl("eval", "--model", d, *IDS)
    assert_clean_error(rc, err, name)


def test_error_tensor_missing(broken_copy, llmctl):
    from safetensors.torch import load_file, save_file
    d = broken_copy()
    sd = load_file(d / "model.safetensors")
    name = "model.layers.3.mlp.down_proj.weight"
    del sd[name]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    rc, _, err = llmctl("eval", "--model", d, *IDS)
    assert_clean_error(rc, err, name)


def test_error_missing_model_dir(llmctl, tmp_path):
    d = tmp_path / "does_not_exist"
    rc, _, err = llmctl("eval", "--model", d, *IDS)
    assert_clean_error(rc, err, str(d))


@pytest.mark.parametrize("bad_id", [str(TOKENIZER_VOCAB), "99999999", "-1"])
def test_error_eval_id_out_of_range(bad_id, nano, llmctl):
    rc, _, err = llmctl("eval", "--model", nano[0], f"--ids=1,{bad_id}")
    assert_clean_error(rc, err, bad_id)


def test_error_tokenize_ids_not_numbers(llmctl, tokenizer_dir):
    rc, _, err = llmctl("tokenize", "--tokenizer", tokenizer_dir, "--ids", "1,abc,3")
    assert_clean_error(rc, err, "abc")


def test_error_init_unknown_preset(llmctl, tokenizer_dir, tmp_path):
    rc, _, err = llmctl("init", "--preset", "gigantic", "--tokenizer", tokenizer_dir, "--out", tmp_path / "x")
    assert_clean_error(rc, err, "gigantic")
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_error_tokenizer_dir_missing(llmctl, tmp_path):
    d = tmp_path / "no_tokenizer"
    rc, _, err = llmctl("tokenize", "--tokenizer", d, "--text", "hi")
    assert_clean_error(rc, err, str(d))


USAGE_ERRORS = {
    "missing_required_option": ["eval", "--ids", "1,2"],
    "unknown_option": ["tokenize", "--tokenizer", ".", "--text", "x", "--bogus"],
    "data_file_missing": ["eval", "--model", ".", "--data", "/nonexistent/heldout.jsonl"],
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_follow_error_contract(case, llmctl):
    rc, _, err = llmctl(*USAGE_ERRORS[case])
    assert_clean_error(rc, err)
