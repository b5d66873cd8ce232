"""Training through the binary: pretrain -> sft on the nano preset, the run directory it
leaves (HF model dirs that transformers loads, metrics, loss curve), data-parallel N=2 ==
N=1, kill -9 then --resume == an uninterrupted run, and the error paths."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import DEMO_TRAIN, ROOT, SFT_SAMPLE, assert_clean_error, head_lines

ADDITION = os.path.join(ROOT, "dataset", "demo", "sft_train.jsonl")
ADDITION_HELDOUT = os.path.join(ROOT, "dataset", "demo", "sft_heldout.jsonl")
TINY = ["--seq-len", "32", "--batch-size", "4", "--dtype", "f32", "--threads", "1"]


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return head_lines(DEMO_TRAIN, 40, tmp_path_factory.mktemp("corpus") / "pt.jsonl")


@pytest.fixture(scope="module")
def pretrained(llmctl_json, tokenizer_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pt"
    summary = llmctl_json("pretrain", "--data", corpus, "--tokenizer", tokenizer_dir, "--preset", "nano",
                          "--out", out, "--max-steps", 12, "--lr", 3e-3, "--save-every", 5,
                          "--eval-data", corpus, "--eval-every", 6, "--eval-batches", 2, *TINY, timeout=300)
    return str(out), summary


def test_pretrain_run_dir(pretrained):
    out, s = pretrained
    assert s["steps"] == 12 and s["final"] == os.path.join(out, "final")
    for f in ("final/config.json", "final/model.safetensors", "final/tokenizer.model", "final/generation_config.json",
              "checkpoint-12/optimizer.pt", "checkpoint-12/trainer_state.json", "checkpoint-10/trainer_state.json",
              "loss_curve.svg", "train_config.json", "metrics.jsonl"):
        assert os.path.exists(os.path.join(out, f)), f
    assert not os.path.exists(os.path.join(out, "checkpoint-5"))  # --keep-last 2 by default
    m = metrics(out)
    assert [x["step"] for x in m] == list(range(1, 13))
    assert m[-1]["loss"] < m[0]["loss"]
    assert all(k in m[0] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "epoch"))
    assert [x["step"] for x in m if "eval_loss" in x] == [6, 12]
    svg = open(os.path.join(out, "loss_curve.svg"), encoding="utf-8").read()
    assert svg.startswith("<svg") and "polyline" in svg


def test_pretrained_model_loads_in_transformers(pretrained, llmctl_json):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    final = os.path.join(pretrained[0], "final")
    model = transformers.AutoModelForCausalLM.from_pretrained(final, torch_dtype=torch.float32).eval()
    ids = [1, 5, 9, 13, 100, 7, 2]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    ours = llmctl_json("eval", "--model", final, "--ids", ",".join(map(str, ids)))
    assert ours["argmax"] == logits.argmax(-1).tolist()
    lp = torch.log_softmax(logits.double(), -1)
    for i in range(1, len(ids)):
        assert abs(ours["logprobs"][i] - lp[i - 1, ids[i]].item()) < 1e-3


def test_sft_from_pretrained_and_exact_match(pretrained, llmctl_json, tmp_path):
    data = head_lines(ADDITION, 64, tmp_path / "add.jsonl")
    s = llmctl_json("sft", "--data", data, "--model", os.path.join(pretrained[0], "final"), "--out", tmp_path / "sft",
                    "--max-steps", 6, "--lr", 1e-3, *TINY, timeout=300)
    assert s["steps"] == 6
    m = metrics(tmp_path / "sft")
    assert len(m) == 6 and all(x["loss"] > 0 for x in m)
    r = llmctl_json("eval", "--model", tmp_path / "sft" / "final", "--exact-match", ADDITION_HELDOUT,
                    "--max-items", 3, "--max-new-tokens", 4)
    assert r["items"] == 3 and 0 <= r["correct"] <= 3 and len(r["results"]) == 3
    assert set(r["results"][0]) == {"prompt", "expected", "answer", "correct"}


def test_data_parallel_two_processes_equal_one(llmctl, tokenizer_dir, corpus, tmp_path):
    common = ["--data", corpus, "--tokenizer", tokenizer_dir, "--preset", "nano", "--max-steps", 4,
              "--seq-len", "32", "--dtype", "f32", "--threads", "1", "--lr", "3e-3"]
    rc, out1, err = llmctl("pretrain", *common, "--out", tmp_path / "n1", "--batch-size", 4, timeout=300)
    assert rc == 0, err
    rc, out2, err = llmctl("pretrain", *common, "--out", tmp_path / "n2", "--batch-size", 2, "--nproc", 2, timeout=300)
    assert rc == 0, err
    assert "on 2 processes" in out2 and out2.count("trained") == 1  # rank 0 reports once
    a, b = metrics(tmp_path / "n1"), metrics(tmp_path / "n2")
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-5 * max(1.0, abs(x["loss"])), (x, y)
        assert abs(x["grad_norm"] - y["grad_norm"]) < 1e-4 * max(1.0, x["grad_norm"]), (x, y)
    cfg = json.load(open(tmp_path / "n2" / "train_config.json"))
    assert cfg["world_size"] == 2


def test_kill_then_resume_matches_uninterrupted(llmctl, llmctl_bin, tokenizer_dir, corpus, tmp_path):
    args = ["pretrain", "--data", corpus, "--tokenizer", tokenizer_dir, "--preset", "nano", "--max-steps", 30,
            "--save-every", 4, "--keep-last", 0, "--lr", 2e-3, "--seq-len", 64, "--batch-size", 4,
            "--dtype", "f32", "--threads", 1]
    rc, _, err = llmctl(*args, "--out", tmp_path / "full", timeout=300)
    assert rc == 0, err
    want = metrics(tmp_path / "full")

    run = tmp_path / "killed"
    p = subprocess.Popen([llmctl_bin, *map(str, args), "--out", str(run)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "checkpoint-8" / "trainer_state.json").exists():
        if p.poll() is not None:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    if (run / "final").exists():
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    rc, _, err = llmctl(*args, "--out", run, "--resume", timeout=300)
    assert rc == 0, err
    got = metrics(run)
    assert [x["step"] for x in got] == list(range(1, 31))
    for x, y in zip(got, want):
        assert x["lr"] == y["lr"]
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x, y)


def test_training_errors(llmctl, tokenizer_dir, corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n{\"nope\": 1}\n", encoding="utf-8")
    rc, _, err = llmctl("pretrain", "--data", bad, "--tokenizer", tokenizer_dir, "--preset", "nano",
                        "--out", tmp_path / "r1", *TINY)
    assert_clean_error(rc, err, "no training samples")
    assert f"{bad}:1" in err  # malformed lines are reported with file:line

    rc, _, err = llmctl("sft", "--data", SFT_SAMPLE, "--out", tmp_path / "r2")
    assert_clean_error(rc, err, "--model")
    rc, _, err = llmctl("pretrain", "--data", tmp_path / "missing.jsonl", "--tokenizer", tokenizer_dir,
                        "--preset", "nano", "--out", tmp_path / "r3")
    assert_clean_error(rc, err, "missing.jsonl")
    rc, _, err = llmctl("pretrain", "--data", corpus, "--preset", "nano", "--out", tmp_path / "r4")
    assert_clean_error(rc, err, "--tokenizer")
    rc, _, err = llmctl("pretrain", "--data", corpus, "--tokenizer", tokenizer_dir, "--preset", "nano",
                        "--out", tmp_path / "r5", "--resume")
    assert_clean_error(rc, err, "no checkpoint")
    rc, _, err = llmctl("pretrain", "--data", corpus, "--tokenizer", tokenizer_dir, "--preset", "nano",
                        "--out", tmp_path / "r6", "--nproc", 0)
    assert_clean_error(rc, err, "--nproc")
    rc, _, err = llmctl("pretrain", "--data", corpus, "--tokenizer", tokenizer_dir, "--preset", "nano",
                        "--out", tmp_path / "r7", "--dtype", "f16")
    assert_clean_error(rc, err, "--dtype")
