"""`llmctl convert --to hf` and real HF model directories in llmctl, against transformers.

- A release directory loads in AutoModelForCausalLM / AutoTokenizer without
  trust_remote_code and gives the same logits, token ids and chat-template rendering.
- Export -> import round trips are bit-identical, with identical `eval` log-probs.
- HF directories as users have them run in llmctl: minimind's own format (model_type
  "minimind", tied embeddings, byte-level BPE tokenizer.json, ChatML), minimind-3 (q/k norm
  under model_type "minimind"), Qwen2 with a Qwen2.5-style template (default system prompt),
  Llama 3 (header template, <|eot_id|>), sharded bf16 checkpoints; generation_config.json
  is honoured.
- Malformed directories fail with one clear error line.
"""
import json
import math
import os
import shutil
import urllib.request

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
safetensors_torch = pytest.importorskip("safetensors.torch")

import gen_hf_reference as gen  # noqa: E402  (tools/ is on sys.path via conftest)
from conftest import SFT_SAMPLE, assert_clean_error  # noqa: E402
from serve_helpers import Server  # noqa: E402

TOL = 1e-4
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
# A Qwen2.5-style template: a literal default system turn when the conversation has none.
QWEN25 = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
          "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are "
          "a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if message.role != "
          "'system' %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
          "<|end_header_id|>\\n\\n' }}{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "def square(x):\n    return x * x\n",
    "Large language models learn from text; small ones learn quickly. 12345 67890",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
] * 20
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there, 你好!"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2+2?"}]


# --- building blocks ------------------------------------------------------------------------

def train_bpe(out_dir, specials, vocab_size=300, chat_template=CHATML, bos=None, eos=None):
    """A byte-level BPE tokenizer.json (minimind style: ByteLevel, no normalizer) + config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": chat_template,
           "bos_token": bos, "eos_token": eos, "pad_token": specials[0], "unk_token": None,
           "add_bos_token": False, "add_eos_token": False, "model_max_length": 512}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    return tok.get_vocab_size()


def build_hf(name, out_dir, vocab=None, dtype=None, shard=None, **overrides):
    """One of gen_hf_reference's tiny models (optionally another vocab size / dtype / shards)."""
    model_cls, cfg_cls, kwargs, seed = gen.CONFIGS[name]
    cfg = gen.make_config(name)
    if vocab:
        cfg.vocab_size = vocab
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).to(torch.float32)
    gen.randomize_(model, seed)
    if dtype is not None:
        model = model.to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kw)
    return out_dir


def hf_logits(model_dir, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def ref_logprobs(logits, ids):
    lp = torch.log_softmax(logits, -1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def llmctl_logprobs(llmctl_json, model, ids):
    j = llmctl_json("eval", "--model", model, "--ids", ",".join(map(str, ids)), "--threads", 2)
    return j["logprobs"][1:]


def assert_close(a, b, tol=TOL):
    assert len(a) == len(b)
    worst = max(abs(x - y) for x, y in zip(a, b))
    assert worst < tol, f"max |logprob diff| {worst:.3g} >= {tol}"


def prompt_ids(llmctl_json, model, messages):
    """The prompt ids llmctl builds for a conversation (its chat template, one new token)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    user = [m for m in messages if m["role"] != "system"]
    assert len(user) == 1, "llmctl chat --prompt takes one user turn"
    args = ["chat", "--model", model, "--prompt", user[0]["content"], "--max-new-tokens", 1,
            "--temperature", 0, "--threads", 2]
    if system:
        args += ["--system", system[0]]
    return llmctl_json(*args)["prompt_token_ids"]


def read_tensors(model_dir):
    out = {}
    for f in sorted(os.listdir(model_dir)):
        if f.endswith(".safetensors"):
            out.update(safetensors_torch.load_file(os.path.join(model_dir, f)))
    return out


def ids_of(n, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


# --- llmctl's own models out to HF ----------------------------------------------------------

@pytest.fixture(scope="module")
def llmctl_model(llmctl_json, tokenizer_dir, tmp_path_factory):
    """A small llmctl model inside a fake two-stage run (pretrain -> sft) for the model card."""
    root = tmp_path_factory.mktemp("run")
    pt = root / "pt" / "final"
    llmctl_json("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", pt, "--seed", 3)
    sft_run = root / "sft"
    shutil.copytree(pt, sft_run / "final")
    for run, mode, data, init in ((root / "pt", "pretrain", "pretrain_hq.jsonl", ""),
                                  (sft_run, "sft", "sft_mini_512.jsonl", str(pt))):
        (run / "train_config.json").write_text(json.dumps({
            "mode": mode, "data": [data], "init_model": init, "batch_size": 8, "grad_accum": 2,
            "seq_len": 128, "world_size": 1, "lr": 5e-4, "min_lr_ratio": 0.1, "warmup_steps": 10,
            "dtype": "bf16", "device": "cpu", "seed": 42}))
        (run / "metrics.jsonl").write_text(
            json.dumps({"step": 100, "loss": 3.5}) + "\n" + json.dumps({"step": 200, "loss": 2.25}) + "\n{torn")
    return str(sft_run / "final")


def test_release_loads_in_transformers(llmctl, llmctl_json, llmctl_model, tmp_path):
    out = tmp_path / "release"
    summary = llmctl_json("convert", "--model", llmctl_model, "--to", "hf", "--out", out, "--dtype", "f32")
    assert summary["dtype"] == "f32" and summary["parameters"] > 0
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json",
              "special_tokens_map.json", "README.md"):
        assert (out / f).exists(), f
    cfg = json.loads((out / "config.json").read_text())
    gen_cfg = json.loads((out / "generation_config.json").read_text())
    assert gen_cfg["eos_token_id"] == cfg["eos_token_id"]
    card = (out / "README.md").read_text()
    assert "Pretraining" in card and "Supervised fine-tuning" in card and "pretrain_hq.jsonl" in card
    assert "200 steps" in card and "2.25" in card, card

    # Same logits as llmctl (no trust_remote_code anywhere).
    vocab = cfg["vocab_size"]
    ids = ids_of(20, vocab, 1)
    assert_close(llmctl_logprobs(llmctl_json, llmctl_model, ids), ref_logprobs(hf_logits(str(out), ids), ids))

    # Same tokens and the same chat rendering.
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "Hello world, 你好世界! 123"
    ours = llmctl_json("tokenize", "--tokenizer", out, "--text", text)["ids"]
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours
    conv = [MESSAGES[0], MESSAGES[1]]
    want = hf_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert want == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there, 你好!<|im_end|>\n" \
                   "<|im_start|>assistant\n"
    assert prompt_ids(llmctl_json, str(out), conv) == hf_tok(want, add_special_tokens=False)["input_ids"]


def test_round_trip_is_bit_identical(llmctl_json, llmctl_model, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    llmctl_json("convert", "--model", llmctl_model, "--to", "hf", "--out", a, "--dtype", "bf16")
    llmctl_json("convert", "--model", a, "--to", "hf", "--out", b)  # keeps bf16
    llmctl_json("convert", "--model", llmctl_model, "--to", "hf", "--out", c)  # keeps f32
    ta, tb, tc, t0 = read_tensors(a), read_tensors(b), read_tensors(c), read_tensors(llmctl_model)
    assert set(ta) == set(tb) == set(tc) == set(t0)
    for k in t0:
        assert ta[k].dtype == torch.bfloat16 and tb[k].dtype == torch.bfloat16
        assert torch.equal(ta[k].view(torch.int16), tb[k].view(torch.int16)), k
        assert torch.equal(tc[k].view(torch.int32), t0[k].view(torch.int32)), k
    text = "The quick brown fox. 你好"
    e0 = llmctl_json("eval", "--model", llmctl_model, "--text", text, "--threads", 2)
    ec = llmctl_json("eval", "--model", c, "--text", text, "--threads", 2)
    assert e0["ids"] == ec["ids"] and e0["logprobs"] == ec["logprobs"]
    ea = llmctl_json("eval", "--model", a, "--text", text, "--threads", 2)
    eb = llmctl_json("eval", "--model", b, "--text", text, "--threads", 2)
    assert ea["logprobs"] == eb["logprobs"]


def test_existing_output_is_kept(llmctl, llmctl_model, tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "precious.txt").write_text("do not lose me")
    rc, _, err = llmctl("convert", "--model", llmctl_model, "--to", "hf", "--out", out)
    assert_clean_error(rc, err, "--overwrite")
    assert (out / "precious.txt").read_text() == "do not lose me"


# --- HF directories as users have them ------------------------------------------------------

def minimind_config(hf_dir, extra=None):
    """Rewrites a saved Llama/Qwen3 config the way minimind's own code writes config.json."""
    cfg = json.loads(open(os.path.join(hf_dir, "config.json")).read())
    mm = {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "dropout": 0.0,
          "flash_attn": True, "use_moe": False, "hidden_act": "silu"}
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size", "rms_norm_eps", "max_position_embeddings",
              "bos_token_id", "eos_token_id", "head_dim"):
        if k in cfg:
            mm[k] = cfg[k]
    mm["rope_theta"] = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
    mm.update(extra or {})
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(mm, f)


@pytest.mark.parametrize("base", ["llama_gqa_tied", "qwen3_headdim"])
def test_minimind_format_model(llmctl_json, tmp_path, base):
    """minimind's checkpoints: model_type "minimind" (MiniMind2 = Llama layout; minimind-3 =
    q/k norms), tied embeddings, its 3-special-token byte-level BPE and ChatML."""
    d = tmp_path / "minimind"
    vocab = train_bpe(d, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos="<|im_start|>", eos="<|im_end|>")
    ref = tmp_path / "ref"
    build_hf(base, ref, vocab=vocab, tie_word_embeddings=True)
    for f in os.listdir(ref):
        shutil.copy(ref / f, d / f)
    minimind_config(d)
    ids = ids_of(20, vocab, 2)
    assert_close(llmctl_logprobs(llmctl_json, d, ids), ref_logprobs(hf_logits(str(ref), ids), ids))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(d))
    conv = [MESSAGES[0], MESSAGES[1]]
    want = hf_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert prompt_ids(llmctl_json, d, conv) == hf_tok(want, add_special_tokens=False)["input_ids"]
    # ... and out as a plain Llama / Qwen3 directory transformers loads by itself.
    out = tmp_path / "out"
    llmctl_json("convert", "--model", d, "--to", "hf", "--out", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == ("qwen3" if base.startswith("qwen3") else "llama")
    assert_close(llmctl_logprobs(llmctl_json, out, ids), ref_logprobs(hf_logits(str(out), ids), ids))


def test_qwen2_with_default_system_prompt(llmctl_json, tmp_path):
    d = tmp_path / "qwen2"
    vocab = train_bpe(d, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], chat_template=QWEN25,
                      eos="<|im_end|>")
    build_hf("qwen2_gqa", d, vocab=vocab)
    ids = ids_of(20, vocab, 3)
    assert_close(llmctl_logprobs(llmctl_json, d, ids), ref_logprobs(hf_logits(str(d), ids), ids))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(d))
    for conv in ([MESSAGES[1]], [MESSAGES[0], MESSAGES[1]]):
        want = hf_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert prompt_ids(llmctl_json, d, conv) == hf_tok(want, add_special_tokens=False)["input_ids"], want


def test_llama3_template_and_rope_scaling(llmctl_json, tmp_path):
    d = tmp_path / "llama3"
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    vocab = train_bpe(d, specials, chat_template=LLAMA3, bos="<|begin_of_text|>", eos="<|eot_id|>")
    build_hf("llama3_rope_scaling", d, vocab=vocab, bos_token_id=0, eos_token_id=[1, 4])
    ids = ids_of(24, vocab, 4)
    assert_close(llmctl_logprobs(llmctl_json, d, ids), ref_logprobs(hf_logits(str(d), ids), ids))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(d))
    conv = [MESSAGES[0], MESSAGES[1]]
    want = hf_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert want.startswith("<|begin_of_text|>")
    assert prompt_ids(llmctl_json, d, conv) == hf_tok(want, add_special_tokens=False)["input_ids"], want


def test_sharded_bf16_checkpoint(llmctl_json, tmp_path):
    d = tmp_path / "sharded"
    build_hf("llama_untied_bias", d, dtype=torch.bfloat16, shard="40KB")
    assert (d / "model.safetensors.index.json").exists()
    ids = ids_of(20, gen.VOCAB, 5)
    assert_close(llmctl_logprobs(llmctl_json, d, ids), ref_logprobs(hf_logits(str(d), ids), ids))
    out = tmp_path / "merged"
    j = llmctl_json("convert", "--model", d, "--to", "hf", "--out", out)
    assert j["dtype"] == "bf16"
    t_in, t_out = read_tensors(d), read_tensors(out)
    assert set(t_in) == set(t_out)
    assert all(torch.equal(t_in[k], t_out[k]) for k in t_in)


def test_generation_config_is_honoured(llmctl_json, llmctl_model, tmp_path):
    d = tmp_path / "greedy"
    shutil.copytree(llmctl_model, d)
    g = json.loads((d / "generation_config.json").read_text())
    g.update({"do_sample": False, "temperature": 1.3})
    (d / "generation_config.json").write_text(json.dumps(g))
    run = lambda *extra: llmctl_json("chat", "--model", d, "--prompt", "Hello", "--max-new-tokens", 12,
                                     "--ignore-eos", "--threads", 2, *extra)["output_token_ids"]
    greedy = run("--temperature", 0)
    assert run("--seed", 1) == greedy and run("--seed", 2) == greedy
    # An explicit flag still wins over the file.
    assert run("--temperature", 1.5, "--seed", 1) != greedy or run("--temperature", 1.5, "--seed", 2) != greedy


# --- malformed directories ------------------------------------------------------------------

@pytest.fixture()
def broken(tmp_path):
    def make(name="llama_gqa_tied"):
        d = tmp_path / name
        build_hf(name, d)
        return d
    return make


def edit_config(d, fn):
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def test_malformed_inputs_fail_clearly(llmctl, broken, tmp_path):
    ids = "1,2,3"
    d = broken()
    edit_config(d, lambda c: c.pop("hidden_size"))
    rc, _, err = llmctl("eval", "--model", d, "--ids", ids)
    assert_clean_error(rc, err, "hidden_size")

    shutil.rmtree(d)
    d = broken()
    edit_config(d, lambda c: c.update(intermediate_size=c["intermediate_size"] + 32))
    rc, _, err = llmctl("eval", "--model", d, "--ids", ids)
    assert_clean_error(rc, err, "mlp.gate_proj.weight")

    shutil.rmtree(d)
    d = broken()
    edit_config(d, lambda c: c.update(model_type="gpt_neox"))
    rc, _, err = llmctl("convert", "--model", d, "--to", "hf", "--out", tmp_path / "x")
    assert_clean_error(rc, err, "gpt_neox")
    assert not (tmp_path / "x").exists()

    shutil.rmtree(d)
    d = broken()
    edit_config(d, lambda c: c.update(rope_scaling={"rope_type": "yarn", "factor": 4.0}, rope_parameters=None))
    rc, _, err = llmctl("eval", "--model", d, "--ids", ids)
    assert_clean_error(rc, err, "yarn")

    shutil.rmtree(d)
    d = broken()
    train_bpe(d, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    text = (d / "tokenizer.json").read_text()
    (d / "tokenizer.json").write_text(text[: len(text) // 2])
    rc, _, err = llmctl("eval", "--model", d, "--text", "hello")
    assert_clean_error(rc, err, "tokenizer.json")



def served_chat(server, content, max_tokens):
    body = json.dumps({"messages": [{"role": "user", "content": content}], "temperature": 0,
                       "max_tokens": max_tokens, "ignore_eos": True}).encode()
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_bpe_hf_model_fine_tunes_and_serves(llmctl_bin, llmctl_json, tmp_path):
    """A Qwen2-style HF directory with its own tokenizer.json: sft straight from it, the result
    still loads in transformers with the same logits, and `serve` answers from the directory
    and from its GGUF export the same greedy text that `chat` gives."""
    d = tmp_path / "qwen2"
    vocab = train_bpe(d, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|im_end|>")
    build_hf("qwen2_gqa", d, vocab=vocab)
    run = tmp_path / "sft"
    s = llmctl_json("sft", "--model", d, "--data", SFT_SAMPLE, "--out", run, "--max-steps", 3,
                    "--seq-len", 64, "--batch-size", 2, "--lr", 1e-3, "--dtype", "f32", "--threads", 2,
                    timeout=300)
    assert s["steps"] == 3 and math.isfinite(s["final_loss"])
    final = run / "final"
    assert (final / "tokenizer.json").exists()
    t_before, t_after = read_tensors(d), read_tensors(final)
    assert any(not torch.equal(t_before[k], t_after[k]) for k in t_before), "sft changed nothing"
    ids = ids_of(20, vocab, 7)
    assert_close(llmctl_logprobs(llmctl_json, final, ids), ref_logprobs(hf_logits(str(final), ids), ids))

    gguf = tmp_path / "final.gguf"
    llmctl_json("convert", "--model", final, "--to", "gguf", "--out", gguf, "--dtype", "f32")
    want = llmctl_json("chat", "--model", final, "--prompt", "你好", "--max-new-tokens", 6, "--ignore-eos",
                       "--temperature", 0, "--threads", 2)
    assert len(want["output_token_ids"]) == 6
    for model in (final, gguf):
        server = Server(llmctl_bin, model, tmp_path / "serve.log")
        try:
            r = served_chat(server, "你好", 6)
        finally:
            rc = server.stop()
        assert rc == 0, server.output()
        assert r["usage"]["completion_tokens"] == 6, r
        assert r["choices"][0]["message"]["content"] == want["text"], model
