"""`llmctl tokenize` against the reference `sentencepiece` library on the same tokenizer.model,
plus round trips, special tokens and the HF tokenizer files written by train-tokenizer."""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

spm = pytest.importorskip("sentencepiece")

SPECIALS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}

# No special-token strings in these: sentencepiece's own encode is the oracle.
TEXTS = {
    "chinese": "你好，世界！今天天气很好，我们去公园散步吧。",
    "english": "The quick brown fox jumps over the lazy dog.",
    "code": "def square(x):\n    if x > 0:\n        return x * x\n\treturn -1  # tab-indented\n",
    "emoji": "I ❤️ 🍕 and 🐍! Family: 👨‍👩‍👧 flags: 🇨🇳🇬🇧",
    "whitespace_runs": "a  b   c    d          e",
    "tabs_newlines": "col1\tcol2\t\tcol3\n\nnext line\r\nwindows\n",
    "digits": "π ≈ 3.14159, 2024-01-01, 1234567890, 007",
    "leading_trailing": "   leading and trailing spaces   ",
    "only_spaces": "     ",
    "only_newlines": "\n\n\n",
    "mixed": "混合 mixed 文本 text 123 and 中文标点：“引号”、《书名》",
    "other_scripts": "Ωμέγα Привет мир مرحبا שלום नमस्ते 한국어 日本語のテキスト",
    "not_nfkc": "ﬁ ① Ａｂｃ ｶﾀｶﾅ e\u0301 \u00a0nbsp\u3000ideo",  # identity normalization: kept as is
    "dash_start": "-5 starts with a dash",
    "angle_brackets": "<|im_start| almost special |> and <im_end> and <|unknown|>",
    "bible": "And God said, Let there be light: and there was light.",
    "poem": "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
}

WITH_SPECIALS = {
    "chat": "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
    "adjacent": "<|im_end|><|im_start|><|endoftext|>",
    "inline": "text<|endoftext|>more text <|im_start|> spaced",
}


# Texts whose beginning/end matter are also encoded on their own (not only inside the batch).
STANDALONE = ["leading_trailing", "only_spaces", "dash_start"]
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def sp(tokenizer_dir):
    return spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "tokenizer.model"))


@pytest.fixture(scope="module")
def tok(llmctl_json, tokenizer_dir):
    """tok(text=... | ids=[...], *flags) -> tokenize JSON, memoised.

    Each binary start costs ~0.6 s of CPU (loading libtorch), so this module keeps the
    number of calls small: the plain texts are checked in one batch (see `batch`), and
    independent calls are prefetched two at a time."""
    cache = {}

    def run(text=None, ids=None, *extra):
        key = (text, None if ids is None else tuple(ids), extra)
        if key not in cache:
            if text is not None:
                # --text=VALUE so that values starting with '-' are not taken for options
                flag = [f"--text={text}"] if text else ["--text", ""]
            else:
                flag = ["--ids", ",".join(map(str, ids))]
            cache[key] = llmctl_json("tokenize", "--tokenizer", tokenizer_dir, *flag, *extra)
        return cache[key]

    def prefetch(jobs):
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda job: run(*job), jobs))

    run.prefetch = prefetch
    return run


@pytest.fixture(scope="module")
def batch(tok):
    """All TEXTS joined by <|endoftext|>, encoded and decoded in one call each.
    Special tokens split the text into segments that are encoded independently (checked
    directly in test_special_tokens_split_text), so the ids between the 0s are the
    per-text encodings and the decoded text splits back on <|endoftext|>."""
    joined = EOT.join(TEXTS.values())
    j = tok(joined)
    segs, cur, pieces, curp = [], [], [], []
    for i, p in zip(j["ids"], j["pieces"]):
        if i == 0:
            segs.append(cur), pieces.append(curp)
            cur, curp = [], []
        else:
            cur.append(i), curp.append(p)
    segs.append(cur), pieces.append(curp)
    assert len(segs) == len(TEXTS), "byte fallback must never produce <unk> (id 0) inside a text"
    decoded = tok(None, j["ids"])["text"]
    return {"joined": joined, "ids": j["ids"], "decoded": decoded,
            "per_text": dict(zip(TEXTS, segs)), "pieces": dict(zip(TEXTS, pieces)),
            "decoded_per_text": dict(zip(TEXTS, decoded.split(EOT)))}


@pytest.fixture(scope="module")
def prefetched(tok, batch):
    jobs = [(TEXTS[k],) for k in STANDALONE] + [(t,) for t in WITH_SPECIALS.values()] \
        + [(t, None, "--no-special") for t in WITH_SPECIALS.values()]
    tok.prefetch(jobs)
    tok.prefetch([(None, tok(*job)["ids"]) for job in jobs[:-len(WITH_SPECIALS)]])
    return tok


@pytest.mark.parametrize("key", list(TEXTS))
def test_ids_match_sentencepiece(key, sp, batch):
    want = sp.encode(TEXTS[key])
    assert batch["per_text"][key] == want, f"{key}: llmctl {batch['per_text'][key]} vs sentencepiece {want}"
    assert batch["pieces"][key] == [sp.id_to_piece(i) for i in want]


@pytest.mark.parametrize("key", list(TEXTS))
def test_roundtrip_in_batch(key, batch):
    assert batch["decoded_per_text"][key] == TEXTS[key]


def test_batch_decode_matches_sentencepiece(batch, sp):
    assert batch["decoded"] == batch["joined"]
    # sentencepiece drops control pieces when decoding, so compare segment by segment
    assert batch["decoded"] == EOT.join(sp.decode(seg) for seg in batch["per_text"].values())


@pytest.mark.parametrize("key", STANDALONE)
def test_standalone_text(key, sp, prefetched):
    text = TEXTS[key]
    j = prefetched(text)
    assert j["ids"] == sp.encode(text)
    assert j["count"] == len(j["ids"])
    assert j["text"] == text
    assert prefetched(None, j["ids"])["text"] == text


@pytest.mark.parametrize("key", list(WITH_SPECIALS))
def test_roundtrip_with_special_tokens(key, prefetched):
    text = WITH_SPECIALS[key]
    ids = prefetched(text)["ids"]
    assert set(ids) & {0, 1, 2}, "special tokens are parsed by default"
    assert prefetched(None, ids)["text"] == text


def test_empty_text(tok):
    j = tok("")
    assert j["ids"] == [] and j["count"] == 0 and j["text"] == ""


def test_special_tokens_map_to_fixed_ids(prefetched, sp):
    assert prefetched(WITH_SPECIALS["adjacent"])["ids"] == [2, 1, 0]
    assert prefetched(WITH_SPECIALS["adjacent"])["pieces"] == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
    for s, i in SPECIALS.items():
        assert sp.id_to_piece(i) == s
    assert sp.unk_id() == 0 and sp.bos_id() == 1 and sp.eos_id() == 2


def test_special_tokens_split_text(prefetched, sp):
    """Text around special tokens is encoded segment by segment, like HF tokenizers do."""
    want = ([1] + sp.encode("user\n你好") + [2] + sp.encode("\n")
            + [1] + sp.encode("assistant\nHello!") + [2] + sp.encode("\n"))
    assert prefetched(WITH_SPECIALS["chat"])["ids"] == want
    want = sp.encode("text") + [0] + sp.encode("more text ") + [1] + sp.encode(" spaced")
    assert prefetched(WITH_SPECIALS["inline"])["ids"] == want


@pytest.mark.parametrize("key", list(WITH_SPECIALS))
def test_no_special_encodes_plain_text(key, prefetched, sp):
    text = WITH_SPECIALS[key]
    ids = prefetched(text, None, "--no-special")["ids"]
    assert not set(ids) & {0, 1, 2}
    assert ids == sp.encode(text)


def test_decode_specials(tok, sp):
    ids = [1] + sp.encode("user\nhi") + [2, 0]
    tok.prefetch([(None, ids), (None, ids, "--no-special")])
    assert tok(None, ids)["text"] == "<|im_start|>user\nhi<|im_end|><|endoftext|>"
    assert tok(None, ids, "--no-special")["text"] == "user\nhi"


def test_decode_invalid_utf8_bytes(tok):
    """Lone byte pieces that are not valid UTF-8 (first 2 bytes of a 3-byte character)
    decode without crashing."""
    j = tok(None, [3 + 0xE4, 3 + 0xBD])
    assert isinstance(j["text"], str)


def test_tokenizer_config_fields(tokenizer_dir, sp):
    with open(os.path.join(tokenizer_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    assert cfg["bos_token"] == "<|im_start|>"
    assert cfg["eos_token"] == "<|im_end|>"
    assert cfg["unk_token"] == "<|endoftext|>"
    assert cfg["pad_token"] == "<|endoftext|>"
    assert isinstance(cfg["chat_template"], str) and cfg["chat_template"]
    assert cfg.get("tokenizer_class") in ("LlamaTokenizer", "LlamaTokenizerFast", "PreTrainedTokenizerFast")
    decoder = cfg.get("added_tokens_decoder", {})
    for s, i in SPECIALS.items():
        assert decoder[str(i)]["content"] == s and decoder[str(i)]["special"] is True
    with open(os.path.join(tokenizer_dir, "special_tokens_map.json"), encoding="utf-8") as f:
        smap = json.load(f)
    assert {k: (v["content"] if isinstance(v, dict) else v) for k, v in smap.items()
            if k in ("bos_token", "eos_token", "unk_token", "pad_token")} == {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


def test_chat_template_renders_chatml(tokenizer_dir):
    """Rendered the way transformers' apply_chat_template does (sandboxed jinja2,
    trim_blocks/lstrip_blocks)."""
    pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    with open(os.path.join(tokenizer_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) \
        .from_string(cfg["chat_template"])

    def render(messages, add_generation_prompt):
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=cfg["bos_token"], eos_token=cfg["eos_token"])

    two_turns = [{"role": "user", "content": "你好"},
                 {"role": "assistant", "content": "Hello! How can I help?"}]
    chatml = ("<|im_start|>user\n你好<|im_end|>\n"
              "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n")
    assert render(two_turns, True) == chatml + "<|im_start|>assistant\n"
    assert render(two_turns, False) == chatml
    three = two_turns + [{"role": "user", "content": "Tell me a joke.\nA short one."}]
    assert render(three, True) == (chatml + "<|im_start|>user\nTell me a joke.\nA short one.<|im_end|>\n"
                                   "<|im_start|>assistant\n")
    system = [{"role": "system", "content": "Be brief."}] + two_turns
    assert render(system, False) == "<|im_start|>system\nBe brief.<|im_end|>\n" + chatml


def test_vocab_size_matches(tokenizer_dir, sp):
    from conftest import TOKENIZER_VOCAB
    assert sp.vocab_size() == TOKENIZER_VOCAB
    assert all(sp.is_byte(3 + b) and sp.id_to_piece(3 + b) == f"<0x{b:02X}>" for b in range(256))


def test_hf_autotokenizer_agrees(tokenizer_dir, batch, prefetched):
    """The tokenizer directory loads in stock transformers (no trust_remote_code) and
    encodes exactly as llmctl does, special tokens included; its chat template renders
    ChatML."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    hf = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    assert hf.encode(batch["joined"], add_special_tokens=False) == batch["ids"]
    for text in WITH_SPECIALS.values():
        assert hf.encode(text, add_special_tokens=False) == prefetched(text)["ids"], text
    assert hf.decode(batch["ids"]) == batch["joined"]
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    msgs = [{"role": "user", "content": "你好"}]
    assert hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
