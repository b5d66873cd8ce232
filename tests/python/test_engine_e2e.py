"""The inference engine through the binary: greedy `llmctl chat` == HF transformers'
greedy generate (an independent oracle), multi-turn chat reusing the prefix cache, Ctrl-C
stopping an answer without ending the session, `llmctl bench`, and the error paths."""
import json
import os
import select
import signal
import subprocess
import time

import pytest

from conftest import assert_clean_error

HF_NAMES = ["llama_gqa_tied", "llama_untied_bias", "qwen2_gqa", "qwen3_headdim"]
PROMPT = [1, 17, 42, 99, 5, 250, 3, 77, 18, 64, 12]


@pytest.fixture(scope="module")
def nano_chat(llmctl_json, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "nano"
    llmctl_json("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", out, "--seed", 2)
    return str(out)


@pytest.mark.parametrize("name", HF_NAMES)
def test_greedy_matches_hf_generate(name, hf_models, llmctl_json):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_models[name], torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        ref = model.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=24,
                             pad_token_id=0)[0, len(PROMPT):].tolist()
    got = llmctl_json("chat", "--model", hf_models[name], "--prompt-ids", ",".join(map(str, PROMPT)),
                      "--temperature", 0, "--max-new-tokens", 24, "--threads", 2, "--block-size", 4)
    assert got["prompt_token_ids"] == PROMPT
    assert got["output_token_ids"] == ref, name
    assert got["finish_reason"] in ("stop", "length")


def test_seeded_sampling_is_reproducible(hf_models, llmctl_json):
    args = ["chat", "--model", hf_models["llama_gqa_tied"], "--prompt-ids", "1,5,9", "--temperature", 1.0,
            "--top-k", 50, "--max-new-tokens", 30, "--seed", 7]
    a, b = llmctl_json(*args), llmctl_json(*args)
    assert a["output_token_ids"] == b["output_token_ids"]
    c = llmctl_json(*args[:-1], 8)
    assert c["output_token_ids"] != a["output_token_ids"]


def test_multi_turn_chat_reuses_the_history(llmctl, nano_chat):
    turns = "hello there\nhow are you\n/reset\nhello there\n/exit\n"
    rc, out, err = llmctl("chat", "--model", nano_chat, "--json", "--temperature", 0, "--max-new-tokens", 12,
                          "--system", "be brief", "--block-size", 4, input=turns, timeout=120)
    assert rc == 0, err
    answers = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(answers) == 3
    first, second, after_reset = answers
    # Turn two's prompt extends turn one's prompt and answer, and the cache serves them.
    assert second["prompt_token_ids"][:len(first["prompt_token_ids"])] == first["prompt_token_ids"]
    seen = len(first["prompt_token_ids"]) + len(first["output_token_ids"])
    assert second["timings"]["cached_prompt_tokens"] >= (seen // 4) * 4 - 4 > 0
    assert second["timings"]["cached_prompt_tokens"] <= len(second["prompt_token_ids"]) - 1
    # After /reset the conversation starts over (and its blocks are still cached).
    assert after_reset["prompt_token_ids"] == first["prompt_token_ids"]
    assert after_reset["output_token_ids"] == first["output_token_ids"]
    assert after_reset["timings"]["cached_prompt_tokens"] > 0


def test_prompt_once_streams_text(llmctl, nano_chat):
    rc, out, err = llmctl("chat", "--model", nano_chat, "--prompt", "hi", "--temperature", 0,
                          "--max-new-tokens", 8, timeout=60)
    assert rc == 0, err
    assert out.endswith("\n")


def test_ctrl_c_stops_the_answer_not_the_session(llmctl_bin, nano_chat):
    cmd = [llmctl_bin, "chat", "--model", nano_chat, "--json", "--max-new-tokens", 100000,
           "--max-model-len", 100000, "--temperature", 1.0, "--seed", 3, "--ignore-eos", "--threads", 1]
    p = subprocess.Popen([str(c) for c in cmd],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        p.stdin.write("tell me a long story\n")
        p.stdin.flush()
        # Interrupt until the cancelled answer comes back (a first signal may land while the
        # model is still loading, before there is an answer to stop).
        for _ in range(30):
            time.sleep(1.0)
            p.send_signal(signal.SIGINT)
            if select.select([p.stdout], [], [], 1.0)[0]:
                break
        first = json.loads(p.stdout.readline())
        assert first["finish_reason"] == "cancelled"
        assert len(first["output_token_ids"]) > 0
        # Ctrl-C while waiting at the prompt: the session goes on.
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)
        p.stdin.write("/system short answers\nhi\n")
        p.stdin.flush()
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)  # and stop that answer too
        assert select.select([p.stdout], [], [], 30)[0], "no answer after Ctrl-C at the prompt"
        second = json.loads(p.stdout.readline())
        assert second["finish_reason"] == "cancelled"
        assert second["prompt_token_ids"] != first["prompt_token_ids"]  # the new system prompt
        p.stdin.write("/exit\n")
        p.stdin.flush()
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_bench_reports_latency_and_throughput(llmctl_json, nano_chat):
    r = llmctl_json("bench", "--model", nano_chat, "--pp", 64, "--tg", 16, "--repetitions", 1,
                    "--num-requests", 12, "--min-input", 4, "--max-input", 40, "--min-output", 2,
                    "--max-output", 20, "--max-num-seqs", 4, "--threads", 2, timeout=300)
    assert r["pp"]["tokens_per_s"] > 0 and r["tg"]["tokens_per_s"] > 0
    assert 0 <= r["tg"]["overhead_share"] < 1
    t = r["throughput"]
    assert t["requests"] == 12 and 24 <= t["output_tokens"] <= 240
    assert t["ttft_s"]["median"] <= t["ttft_s"]["p99"]
    assert t["output_tokens_per_s"] > 0


@pytest.mark.parametrize("args,needle", [
    (["--top-p", "1.5"], "--top-p"),
    (["--temperature", "-1"], "--temperature"),
    (["--prompt-ids", "1,x"], "--prompt-ids"),
    (["--prompt-ids", "99999"], "vocabulary"),
    (["--block-size", "0"], "--block-size"),
])
def test_bad_flags_are_clean_errors(llmctl, nano_chat, args, needle):
    base = ["chat", "--model", nano_chat, "--max-new-tokens", 4]
    if "--prompt-ids" not in args:
        base += ["--prompt", "hi"]
    rc, _, err = llmctl(*base, *args)
    assert_clean_error(rc, err, needle)


def test_model_without_tokenizer_needs_prompt_ids(llmctl, hf_models):
    rc, _, err = llmctl("chat", "--model", hf_models["llama_gqa_tied"], "--prompt", "hi")
    assert_clean_error(rc, err, "--prompt-ids")


def test_model_chat_template_picks_the_format(llmctl_json, nano_chat, tmp_path):
    """A model dir whose tokenizer_config.json has a Llama 2 / Mistral [INST] template is
    prompted in that format; llmctl's own dirs use ChatML."""
    import shutil
    llama_dir = tmp_path / "inst"
    shutil.copytree(nano_chat, llama_dir)
    cfg_path = llama_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["chat_template"] = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    args = ["--prompt", "hi", "--temperature", 0, "--max-new-tokens", 2]
    inst = llmctl_json("chat", "--model", llama_dir, *args)
    want = llmctl_json("tokenize", "--tokenizer", llama_dir, "--text", "<s>[INST] hi [/INST]")["ids"]
    assert inst["prompt_token_ids"] == want
    chatml = llmctl_json("chat", "--model", nano_chat, *args)
    want = llmctl_json("tokenize", "--tokenizer", nano_chat,
                       "--text", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["ids"]
    assert chatml["prompt_token_ids"] == want
