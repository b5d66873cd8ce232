"""GGUF against its reference implementations.

* gguf-py (llama.cpp's own Python package) writes a tiny llama model in every ggml type
  llmctl reads; `llmctl convert --to hf` must give exactly gguf-py's dequantized values,
  with llama.cpp's q/k row permutation undone.
* llama.cpp itself (llama-cpp-python) loads what `llmctl convert --to gguf` writes and must
  tokenize and continue text as llmctl does.
Both parts skip cleanly when their package is not installed.
"""
import json
import os
import struct

import numpy as np
import pytest

from conftest import ROOT, assert_clean_error

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

safetensors_numpy = pytest.importorskip("safetensors.numpy")

# Multiples of 256, so every K-quant fits a row.
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 256, 4, 2, 512, 1
HEAD_DIM = HIDDEN // HEADS
TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]


# ----------------------------------------------------------------------------- vocabularies

def bytes_to_unicode():
    """GPT-2's byte -> printable character map (byte-level BPE spells bytes this way)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def add_llama_vocab(w):
    """A sentencepiece-style vocab: <unk> <s> </s>, the 256 byte pieces, a few words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = ["▁", "▁the", "▁a", "e", "t", "h", "▁he", "llo", "▁hello", "o", "l"]
    tokens += words
    types += [1] * len(words)
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_space_prefix(True)
    return len(tokens)


def add_gpt2_vocab(w):
    """A byte-level BPE vocab: the 256 byte characters, two merges, one control token."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + ["Ġt", "Ġth", "<|endoftext|>"]
    types = [1] * (len(chars) + 2) + [3]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t", "Ġt h"])
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    return len(tokens)


# ----------------------------------------------------------------------------- writing

def encode(x, qtype, rng):
    """float32 rows -> the raw GGUF bytes of `qtype` (random valid blocks where gguf-py has
    no quantizer: the K-quants)."""
    if qtype == T.F32:
        return x.astype(np.float32)
    if qtype == T.F16:
        return x.astype(np.float16)
    try:
        return gguf.quants.quantize(x, qtype)
    except NotImplementedError:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (x.shape[0], x.shape[1] // block * size), dtype=np.uint8)
        blocks = raw.reshape(-1, size)
        n = blocks.shape[0]

        def half(lo, hi):
            return rng.uniform(lo, hi, n).astype(np.float16).view(np.uint8).reshape(n, 2)

        if qtype in (T.Q4_K, T.Q5_K):
            blocks[:, 0:2] = half(0.001, 0.01)   # d
            blocks[:, 2:4] = half(0.001, 0.01)   # dmin
        elif qtype == T.Q6_K:
            blocks[:, 208:210] = half(0.0005, 0.002)
        return raw


def dequantize(raw, qtype):
    return gguf.quants.dequantize(raw, qtype).astype(np.float32)


def write_model(path, qtype, vocab_style, seed=0, arch="llama"):
    """A one-layer GGUF (llama; or qwen2, with q/k/v biases) whose 2-D weights are all
    `qtype`; returns {gguf tensor name: dequantized float32 values as stored}."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(0)
    n_vocab = add_llama_vocab(w) if vocab_style == "llama" else add_gpt2_vocab(w)
    w.add_vocab_size(n_vocab)

    shapes = {"token_embd.weight": (n_vocab, HIDDEN), "output_norm.weight": (HIDDEN,),
              "output.weight": (n_vocab, HIDDEN)}
    for i in range(LAYERS):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HEADS * HEAD_DIM, HIDDEN),
            f"blk.{i}.attn_k.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"blk.{i}.attn_v.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"blk.{i}.attn_output.weight": (HIDDEN, HEADS * HEAD_DIM),
            f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, FFN),
        })
        if arch == "qwen2":
            shapes.update({f"blk.{i}.attn_q.bias": (HEADS * HEAD_DIM,), f"blk.{i}.attn_k.bias": (KV_HEADS * HEAD_DIM,),
                           f"blk.{i}.attn_v.bias": (KV_HEADS * HEAD_DIM,)})
    want = {}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape).astype(np.float32) * 0.05
        if len(shape) == 1:
            x = x * 10 if name.endswith(".bias") else 1.0 + x
            w.add_tensor(name, x)
            want[name] = x
            continue
        raw = encode(x, qtype, rng)
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, raw)
        else:
            w.add_tensor(name, raw, raw_dtype=qtype)
        want[name] = dequantize(raw, qtype).reshape(shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return want


def unpermute(w, n_head):
    """llama.cpp's interleaved q/k rows back to HF's rotate-half order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_NAMES = {
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(name):
    if name in HF_NAMES:
        return HF_NAMES[name]
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{HF_NAMES[rest]}"


# ----------------------------------------------------------------------------- gguf-py -> llmctl

@pytest.mark.parametrize("qtype", TYPES, ids=[t.name for t in TYPES])
def test_every_type_dequantizes_as_gguf_py(llmctl, tmp_path, qtype):
    style = "llama" if TYPES.index(qtype) % 2 == 0 else "gpt2"
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    want = write_model(path, qtype, style, seed=TYPES.index(qtype))
    out = tmp_path / "hf"
    llmctl("convert", "--model", path, "--to", "hf", "--out", out, check=True, timeout=300)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == HIDDEN and cfg["num_hidden_layers"] == LAYERS
    assert cfg["num_attention_heads"] == HEADS and cfg["num_key_value_heads"] == KV_HEADS
    assert cfg["intermediate_size"] == FFN and cfg["tie_word_embeddings"] is False
    got = safetensors_numpy.load_file(str(out / "model.safetensors"))
    assert set(got) == {hf_name(n) for n in want}
    for name, ref in want.items():
        if name.endswith("attn_q.weight"):
            ref = unpermute(ref, HEADS)
        elif name.endswith("attn_k.weight"):
            ref = unpermute(ref, KV_HEADS)
        g = got[hf_name(name)].astype(np.float32)
        assert g.shape == ref.shape, name
        assert np.array_equal(g, ref), f"{qtype.name} {name}: max |diff| {np.abs(g - ref).max()}"


def test_qwen2_architecture_is_read_without_permutation(llmctl, tmp_path):
    """llama.cpp's qwen2 ropes halves as HF does: its q/k rows come out as stored."""
    path = tmp_path / "qwen2.gguf"
    want = write_model(path, T.Q8_0, "gpt2", seed=7, arch="qwen2")
    out = tmp_path / "hf"
    llmctl("convert", "--model", path, "--to", "hf", "--out", out, check=True, timeout=300)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    got = safetensors_numpy.load_file(str(out / "model.safetensors"))
    assert set(got) == {hf_name(n) for n in want}
    for name, ref in want.items():
        assert np.array_equal(got[hf_name(name)].astype(np.float32), ref), name


def test_bad_files_give_one_clear_error(llmctl, tmp_path):
    good = tmp_path / "good.gguf"
    write_model(good, T.Q8_0, "llama")
    data = good.read_bytes()
    cases = {
        "magic.gguf": (b"GGUX" + data[4:], None),
        "version.gguf": (data[:4] + struct.pack("<I", 9) + data[8:], "version 9"),
        "truncated.gguf": (data[: len(data) - 1000], "truncated"),
        "header.gguf": (data[:100], None),
    }
    for fname, (content, needle) in cases.items():
        p = tmp_path / fname
        p.write_bytes(content)
        rc, _, err = llmctl("convert", "--model", p, "--to", "hf", "--out", tmp_path / ("out-" + fname))
        line = assert_clean_error(rc, err, p.name)
        if needle:
            assert needle in line, line
        assert not (tmp_path / ("out-" + fname)).exists()


# ----------------------------------------------------------------------------- llmctl -> llama.cpp

@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")


def byte_level_tokenizer(out_dir, split_regex):
    """A small byte-level BPE tokenizer.json (Qwen2 / Llama 3 pre-tokenizer) trained on the
    demo corpus, with ChatML specials, as HF `tokenizers` writes it."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    docs = []
    with open(os.path.join(ROOT, "dataset", "demo", "heldout.jsonl"), encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(docs, trainer=trainers.BpeTrainer(
        vocab_size=1500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.decoder = decoders.ByteLevel()
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
                   "pad_token": "<|endoftext|>", "add_bos_token": False}, f)
    return out_dir


NANO = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 2000, "hidden_size": 256,
        "intermediate_size": 704, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
        "head_dim": 32, "max_position_embeddings": 2048, "rope_theta": 1000000.0, "rms_norm_eps": 1e-05,
        "tie_word_embeddings": True}
FAMILIES = {
    # q/k/v biases: written as llama with attn_q/k/v.bias (permuted like the weights)
    "nano-qwen2": dict(NANO, architectures=["Qwen2ForCausalLM"], model_type="qwen2"),
    # per-head q/k norms and head_dim != hidden/heads: llama.cpp's qwen3 architecture
    "nano-qwen3": dict(NANO, architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=48,
                       tie_word_embeddings=False),
}


@pytest.fixture(scope="module", params=["nano", "nano-qwen2", "nano-qwen3", "nano-qwen2-bpe", "nano-llama3-bpe",
                                        "demo-sft"])
def source_model(request, llmctl, tokenizer_dir, tmp_path_factory):
    """Random nano models with a sentencepiece tokenizer and with byte-level BPE ones (GGUF
    `llama` and `gpt2` vocabularies), and the demo's trained SFT model when `make demo` has
    made it (a trained model's greedy path is a sharper test than a random one's)."""
    if request.param == "demo-sft":
        path = os.path.join(ROOT, "runs", "demo", "sft", "final")
        if not os.path.exists(os.path.join(path, "config.json")):
            pytest.skip("no runs/demo/sft/final (make demo)")
        return request.param, path
    root = tmp_path_factory.mktemp(request.param)
    tok = tokenizer_dir
    if request.param == "nano-qwen2-bpe":
        tok = byte_level_tokenizer(str(root / "tok"), QWEN2_SPLIT)
    elif request.param == "nano-llama3-bpe":
        tok = byte_level_tokenizer(str(root / "tok"), LLAMA3_SPLIT)
    out = root / "model"
    if request.param in FAMILIES:
        cfg = root / "config.json"
        cfg.write_text(json.dumps(FAMILIES[request.param]))
        llmctl("init", "--config", cfg, "--tokenizer", tok, "--out", out, "--seed", "1", check=True)
        # init leaves biases at 0 and norms at 1: make them matter (a wrong bias permutation
        # or a dropped q/k norm then changes llama.cpp's logits).
        rng = np.random.default_rng(3)
        st = str(out / "model.safetensors")
        tensors = safetensors_numpy.load_file(st)
        for name, t in tensors.items():
            if name.endswith(".bias"):
                tensors[name] = rng.normal(0, 0.5, t.shape).astype(t.dtype)
            elif name.endswith("norm.weight"):
                tensors[name] = rng.uniform(0.5, 1.5, t.shape).astype(t.dtype)
        safetensors_numpy.save_file(tensors, st, metadata={"format": "pt"})
    else:
        llmctl("init", "--preset", "nano", "--tokenizer", tok, "--out", out, "--seed", "1", check=True)
    return request.param, str(out)


def llmctl_ids(llmctl_json, model, text):
    return llmctl_json("tokenize", "--tokenizer", model, "--text", text)["ids"]


TEXTS = ["Hello world, this is a test.", "The quick brown fox jumps over the lazy dog.",
         "你好，世界！今天天气很好。", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
         "  leading spaces and\ttabs\n\nnew lines 12345"]


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_llama_cpp_runs_the_export(llmctl, llmctl_json, llama_cpp, source_model, tmp_path, dtype):
    kind, source_model = source_model
    gguf_path = tmp_path / f"model-{dtype}.gguf"
    llmctl("convert", "--model", source_model, "--to", "gguf", "--out", gguf_path, "--dtype", dtype,
           check=True, timeout=300)
    fields = gguf.GGUFReader(str(gguf_path)).fields

    def string(key):
        f = fields[key]
        return bytes(f.parts[f.data[0]]).decode("utf-8")

    want_vocab = {"nano-qwen2-bpe": ("gpt2", "qwen2"), "nano-llama3-bpe": ("gpt2", "llama-bpe")}.get(kind, ("llama", None))
    assert string("tokenizer.ggml.model") == want_vocab[0]
    if want_vocab[1]:
        assert string("tokenizer.ggml.pre") == want_vocab[1]
    assert string("general.architecture") == ("qwen3" if kind == "nano-qwen3" else "llama")
    # An f32 KV cache (llama.cpp defaults to f16), so f32 results compare closely.
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=256, n_threads=2, logits_all=True, verbose=False,
                          type_k=0, type_v=0)

    # Same tokens for the same text (special tokens parsed, no BOS added by either).
    for text in TEXTS:
        ours = llmctl_ids(llmctl_json, source_model, text)
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert theirs == ours, f"{text!r}: llama.cpp {theirs} vs llmctl {ours}"

    # Same log-probability of every next token of a prompt, llmctl running the same GGUF
    # (and, from f32, exactly what it computes from the model directory).
    prompt = TEXTS[3] + "The answer is"
    ev = llmctl_json("eval", "--model", gguf_path, "--text", prompt)
    ids = ev["ids"]
    assert ids == llmctl_ids(llmctl_json, source_model, prompt)
    if dtype == "f32":
        assert ev["logprobs"] == llmctl_json("eval", "--model", source_model, "--text", prompt)["logprobs"]
    llm.reset()
    llm.eval(ids)
    logp = log_softmax(np.array(llm.scores[: len(ids)]))
    theirs = np.array([logp[i, ids[i + 1]] for i in range(len(ids) - 1)])
    ours = np.array(ev["logprobs"][1:], dtype=np.float64)
    diff = np.abs(ours - theirs)
    if dtype == "f32":
        assert diff.max() < 1e-3, f"max |diff| {diff.max()}"
    else:
        # llama.cpp also rounds the activations to q8_0 inside its matmuls: unlikely tokens
        # (logprob -20) move more than likely ones.
        assert (diff < 0.05 + 0.015 * np.abs(ours)).all(), f"|diff| {diff} at logprobs {ours}"
        assert diff.mean() < 0.08, f"mean |diff| {diff.mean()}"

    # Same greedy continuation for 16 tokens (f32: quantized activations may flip near-ties).
    if dtype == "f32":
        res = llmctl_json("chat", "--model", gguf_path, "--raw", "--prompt", prompt, "--temperature", "0",
                          "--max-new-tokens", "16", "--ignore-eos")
        assert res["prompt_token_ids"] == ids
        ours = res["output_token_ids"]
        assert len(ours) == 16
        llm.reset()
        llm.eval(ids)
        theirs = []
        for _ in range(len(ours)):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            theirs.append(nxt)
            llm.eval([nxt])
        assert theirs == ours
