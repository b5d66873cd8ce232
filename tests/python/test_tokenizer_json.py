"""Byte-level BPE tokenizer.json support: `llmctl tokenize` against HF `tokenizers` on
tokenizers trained here in the styles of GPT-2, Qwen2, Llama 3, minimind (exact config) and
a mixed one (NFKC, lstrip/rstrip/single_word added tokens, Digits + Split behaviours), on a
multilingual corpus. Ids and decoded text must match HF exactly. Then Tokenizer::save()
output (written through the unit-test binary) must load in HF tokenizers and transformers'
AutoTokenizer and encode the same."""
import json
import os
import random
import subprocess

import pytest

from conftest import DEMO_HELDOUT, DEMO_TRAIN, ROOT

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# Text in scripts and shapes the demo corpus lacks, mixed into the training corpus.
EXTRA = [
    "The quick brown fox jumps over the lazy dog. It's what we'll do; they're sure I'd say THEY'LL.",
    "def square(x):\n    if x > 0:\n        return x * x\n\treturn -1  # tab-indented\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // C++\n",
    "Ωμέγα άλφα βήτα γάμμα δέλτα — Привет, мир! Как дела? مرحبا بالعالم שלום עולם",
    "नमस्ते दुनिया  한국어 텍스트입니다  日本語のテキストです。カタカナ ひらがな",
    "emoji 😀🎉👩‍👩‍👧 flags 🇨🇳🇬🇧 hearts ❤️💙 and symbols ∑∫√ ✓ ±½",
    "digits 1234567890 3.14159 2024-01-01 007 ١٢٣ ٤٥٦ ½ ⅓",
    "fullwidth Ａｂｃ ＡＢＣ １２３ ｶﾀｶﾅ ligature ﬁ ﬂ circled ① ② e\u0301 cafe\u0301",
    "spaces   and\ttabs\t\tand\n\nnewlines\r\n  indented\u3000ideographic\u00a0nbsp",
]

TEST_TEXTS = [
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning God created the heaven and the earth.",
    "def square(x):\n    if x > 0:\n        return x * x\n\treturn -1  # comment\n",
    "I ❤️ 🍕 and 🐍! Family: 👨‍👩‍👧 flags: 🇨🇳🇬🇧 😀😀😀",
    "a  b   c    d          e",
    "   leading and trailing   ",
    "     ",
    "\n\n\n",
    "col1\tcol2\t\tcol3\n\nnext line\r\nwindows\r\n\r\n",
    "π ≈ 3.14159, 2024-01-01, 1234567890, 007, 1,000,000.00",
    "混合 mixed 文本 text 123 and 中文标点：“引号”、《书名》",
    "Ωμέγα Привет мир مرحبا שלום नमस्ते 한국어 日本語のテキスト",
    "ﬁ ① Ａｂｃ ｶﾀｶﾅ e\u0301 cafe\u0301 \u00a0nbsp\u3000ideo \u180e mvs \u0085 nel \u2028 ls",
    "It's DON'T we'LL they'Re I'M you'VE he'D 's",
    "-5 starts with a dash",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
    "text<|endoftext|>more text <|im_start|> spaced<|im_end|><|im_start|>",
    "<|im_start| almost special |> and <im_end> and <|unknown|>",
    "x" * 300 + " " + "ab" * 200 + " " + "7" * 50,
    "\u200b zero-width \u200d joiner \ufeff bom",
    "mask: a  <mask>  b, <mask>end, word wd here, awd, wd_x, (wd)",
]
# HF's encode / decode take str: invalid UTF-8 is tested in the unit tests instead.
SEP = "<|endoftext|>"


def corpus():
    rng = random.Random(1)
    docs = []
    with open(DEMO_HELDOUT, encoding="utf-8") as f:
        docs += [json.loads(line)["text"] for line in f]
    with open(DEMO_TRAIN, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 400:
                break
            docs.append(json.loads(line)["text"])
    for _ in range(300):
        docs.append(" ".join(rng.sample(EXTRA, 4)))
    return docs


def byte_level_trainer(vocab_size, specials):
    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def build(style, docs):
    """(tokenizer, tokenizer_config dict) in the given style."""
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML, "add_bos_token": False,
           "add_eos_token": False, "clean_up_tokenization_spaces": False}
    if style == "minimind":
        # minimind's train_tokenizer.py, as is.
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok.train_from_iterator(docs, trainer=byte_level_trainer(6400, specials))
        tok.decoder = decoders.ByteLevel()
        assert [tok.token_to_id(s) for s in specials] == [0, 1, 2]
        cfg.update(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
                   unk_token="<|endoftext|>", model_max_length=32768)
        return tok, cfg
    if style == "gpt2":
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.train_from_iterator(docs, trainer=byte_level_trainer(1500, ["<|endoftext|>"]))
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
        cfg.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
        return tok, cfg
    if style == "qwen2":
        tok = tokenizers.Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.train_from_iterator(docs, trainer=byte_level_trainer(2000, []))
        tok.decoder = decoders.ByteLevel()
        # Qwen2's specials come after the BPE vocabulary, outside model.vocab.
        tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        cfg.update(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        return tok, cfg
    if style == "llama3":
        tok = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.train_from_iterator(docs, trainer=byte_level_trainer(2500, []))
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
        cfg.update(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
        del cfg["add_bos_token"]  # Llama 3's config leaves it to the post_processor
        return tok, cfg
    if style == "mixed":
        tok = tokenizers.Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.Split(",", behavior="merged_with_next"),
            pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_previous"),
            pre_tokenizers.Split("--", behavior="removed"),
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
        tok.train_from_iterator(docs, trainer=byte_level_trainer(1200, ["<|endoftext|>"]))
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<|im_start|>", "<|im_end|>",
                                AddedToken("<mask>", lstrip=True, rstrip=True, special=True)])
        tok.add_tokens([AddedToken("wd", single_word=True), AddedToken("世界", normalized=True),
                        AddedToken("ﬁx", normalized=True)])
        cfg.update(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
        return tok, cfg
    raise ValueError(style)


STYLES = ["gpt2", "qwen2", "llama3", "minimind", "mixed"]


@pytest.fixture(scope="module")
def docs():
    return corpus()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, docs):
    """style -> (dir, HF tokenizer) with tokenizer.json + tokenizer_config.json saved."""
    out = {}
    for style in STYLES:
        tok, cfg = build(style, docs)
        d = tmp_path_factory.mktemp(style)
        tok.save(str(d / "tokenizer.json"))
        with open(d / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False, indent=2)
        out[style] = (str(d), tok)
    return out


def joined():
    return SEP.join(TEST_TEXTS)


def first_difference(hf, got_ids, texts):
    """A readable message naming the first test text that encodes differently."""
    pos = 0
    sep = hf.token_to_id(SEP)
    for t in texts:
        want = hf.encode(t, add_special_tokens=False).ids
        if got_ids[pos:pos + len(want)] != want:
            return f"first difference in {t!r}:\n  llmctl {got_ids[pos:pos + len(want) + 3]}\n  HF     {want}"
        pos += len(want) + (1 if sep is not None else 0)
    return "difference after the last text"


@pytest.mark.parametrize("style", STYLES)
def test_encode_matches_hf(style, trained, llmctl_json):
    d, hf = trained[style]
    text = joined()
    want = hf.encode(text, add_special_tokens=False).ids
    got = llmctl_json("tokenize", "--tokenizer", d, f"--text={text}")
    assert got["ids"] == want, first_difference(hf, got["ids"], TEST_TEXTS)
    assert got["pieces"] == [hf.id_to_token(i) for i in want]
    # Decoding gives HF's decode: the text itself unless the style normalizes or adds spaces.
    assert got["text"] == hf.decode(want, skip_special_tokens=False)
    if style in ("gpt2", "llama3", "minimind"):
        assert got["text"] == text


@pytest.mark.parametrize("style", STYLES)
def test_encode_without_special_tokens_matches_hf(style, trained, llmctl_json):
    """--no-special: special-token text is encoded as plain text (HF encode_special_tokens);
    non-special added tokens still match."""
    d, hf = trained[style]
    text = joined()
    hf.encode_special_tokens = True
    try:
        want = hf.encode(text, add_special_tokens=False).ids
    finally:
        hf.encode_special_tokens = False
    got = llmctl_json("tokenize", "--tokenizer", d, f"--text={text}", "--no-special")
    assert got["ids"] == want
    specials = {hf.token_to_id(s) for s in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")} - {None}
    assert not specials & set(got["ids"])


@pytest.mark.parametrize("style", STYLES)
def test_decode_matches_hf(style, trained, llmctl_json):
    """Whole encodings in a shuffled order with special tokens in between (ids that end
    inside a character are the streaming tests' business: HF would print U+FFFD)."""
    d, hf = trained[style]
    rng = random.Random(7)
    specials = [i for i in (hf.token_to_id(s) for s in ("<|im_start|>", "<|im_end|>", SEP)) if i is not None]
    ids = []
    for t in rng.sample(TEST_TEXTS, len(TEST_TEXTS)):
        ids += hf.encode(t, add_special_tokens=False).ids + [rng.choice(specials)]
    got = llmctl_json("tokenize", "--tokenizer", d, "--ids", ",".join(map(str, ids)))
    assert got["text"] == hf.decode(ids, skip_special_tokens=False)
    got = llmctl_json("tokenize", "--tokenizer", d, "--ids", ",".join(map(str, ids)), "--no-special")
    assert got["text"] == hf.decode(ids, skip_special_tokens=True)


def test_minimind_shape(trained):
    """The minimind tokenizer really is the 6400-entry one (the corpus is big enough)."""
    _, hf = trained["minimind"]
    assert hf.get_vocab_size() == 6400
    assert [hf.id_to_token(i) for i in range(3)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def unit_test_binary(llmctl_bin):
    exe = os.environ.get("LLMCTL_TESTS_BIN") or os.path.join(os.path.dirname(os.path.abspath(llmctl_bin)),
                                                               "tests", "llmctl_tests")
    if not os.path.exists(exe):
        pytest.skip(f"no unit-test binary at {exe} (set LLMCTL_TESTS_BIN): it runs Tokenizer::save()")
    return exe


def resave(llmctl_bin, src, dst, rebuild=False):
    env = dict(os.environ, LLMCTL_RESAVE=f"{src}:{dst}" + (":rebuild" if rebuild else ""))
    p = subprocess.run([unit_test_binary(llmctl_bin), "--gtest_filter=TokenizerBpe.ResaveForPythonTests"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert os.path.exists(os.path.join(dst, "tokenizer.json")), p.stdout[-2000:]


@pytest.mark.parametrize("rebuild", [False, True], ids=["save", "from_byte_level_bpe"])
@pytest.mark.parametrize("style", STYLES)
def test_saved_tokenizer_loads_in_hf(style, rebuild, trained, llmctl_bin, tmp_path):
    """Tokenizer::save() writes a tokenizer.json that HF tokenizers and transformers'
    AutoTokenizer load and encode exactly like the original (and, rebuilt from
    vocabulary()/merges()/pre_tokenizer_name() as a GGUF import does, still the same)."""
    d, hf = trained[style]
    if rebuild and style == "mixed":
        pytest.skip("the mixed pre-tokenizer has no llama.cpp name")
    dst = str(tmp_path / "saved")
    resave(llmctl_bin, d, dst, rebuild)
    text = joined()
    want = hf.encode(text, add_special_tokens=False).ids
    reloaded = tokenizers.Tokenizer.from_file(os.path.join(dst, "tokenizer.json"))
    # Added tokens keep their flags only through save(); a GGUF vocabulary has none.
    texts = TEST_TEXTS if not rebuild else [t for t in TEST_TEXTS if "<mask>" not in t and "wd" not in t]
    assert reloaded.encode(SEP.join(texts), add_special_tokens=False).ids == \
        hf.encode(SEP.join(texts), add_special_tokens=False).ids
    if not rebuild:
        assert reloaded.encode(text, add_special_tokens=False).ids == want
        assert reloaded.get_vocab() == hf.get_vocab()
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(dst)
    assert auto.encode(SEP.join(texts), add_special_tokens=False) == \
        hf.encode(SEP.join(texts), add_special_tokens=False).ids
    with open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("eos_token"):
        assert auto.eos_token_id == hf.token_to_id(cfg["eos_token"])
    if style == "llama3":
        # The BOS the post_processor adds survives the round trip.
        bos = hf.token_to_id("<|begin_of_text|>")
        assert auto.encode("hi")[0] == bos and auto.encode("hi")[1] != bos
    if style == "minimind":
        assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (1, 2, 0)
        assert auto.encode("hi")[0] != 1  # add_bos_token false, as minimind's config says
        msgs = [{"role": "user", "content": "你好"}]
        assert auto.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
            "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
