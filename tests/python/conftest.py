"""Shared fixtures for llmctl's Python tests (pytest).

* ``llmctl_bin``  - path of the built binary (env LLMCTL_BIN, default build/llmctl);
                    every test is skipped, with the reason, when it is missing.
* ``llmctl``      - ``llmctl(*args, timeout=120, check=False) -> (rc, stdout, stderr)``.
* ``llmctl_json`` - runs with ``--json`` expected to succeed, returns the parsed stdout.
* ``tokenizer_dir`` - session-wide small tokenizer (vocab 2000) trained once by the binary
                    on a 300-document slice of dataset/demo plus dataset/samples/sft_sample.jsonl;
                    ``tokenizer_info`` gives (dir, train-tokenizer --json summary).
* ``heldout_slice`` - the first 20 documents of dataset/demo/heldout.jsonl.
* ``hf_models``   - session-wide tiny random HF reference models (tools/gen_hf_reference.py).

Helpers importable with ``from conftest import ...``: ``run_llmctl(binary, *args, timeout)``,
``assert_clean_error(rc, stderr, *needles)``, ``head_lines(src, n, dst)``.
Calls retry for up to LLMCTL_WAIT seconds (default 300) while the binary is being relinked.

Everything runs on CPU with tiny models; no network access is needed.
"""
import errno
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BIN = os.path.join(ROOT, "build", "llmctl")
DEMO_TRAIN = os.path.join(ROOT, "dataset", "demo", "train.jsonl")
DEMO_HELDOUT = os.path.join(ROOT, "dataset", "demo", "heldout.jsonl")
SFT_SAMPLE = os.path.join(ROOT, "dataset", "samples", "sft_sample.jsonl")
PRETRAIN_SAMPLE = os.path.join(ROOT, "dataset", "samples", "pretrain_sample.jsonl")
TOOLS = os.path.join(ROOT, "tools")

TOKENIZER_VOCAB = 2000
TOKENIZER_DOCS = 300

if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

# Keep torch (used in-process by the HF reference side) from oversubscribing 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def llmctl_path():
    return os.environ.get("LLMCTL_BIN", DEFAULT_BIN)


def run_llmctl(binary, *args, timeout=120, input=None):
    """Run the binary; returns (rc, stdout, stderr) as text. Never raises on rc != 0."""
    cmd = [binary] + [str(a) for a in args]
    deadline = time.monotonic() + float(os.environ.get("LLMCTL_WAIT", "300"))
    while True:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                               encoding="utf-8", errors="replace")
            return p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"timeout after {timeout}s: {' '.join(cmd)}\nstderr: {e.stderr!r}")
        except OSError as e:
            # The binary is being relinked (missing, not yet executable, text busy,
            # half written): wait for the rebuild to finish, then retry.
            if e.errno not in (errno.ENOENT, errno.EACCES, errno.ETXTBSY, errno.ENOEXEC) \
                    or time.monotonic() > deadline:
                raise
            time.sleep(2)


def head_lines(src, n, dst):
    """Write the first n lines of src to dst; returns dst."""
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i >= n:
                break
            out.write(line)
    return str(dst)


@pytest.fixture(scope="session")
def llmctl_bin():
    path = llmctl_path()
    # tolerate a relink in progress (configured build dir, binary briefly absent) for a while
    build_configured = os.path.exists(os.path.join(os.path.dirname(path), "CMakeCache.txt"))
    for _ in range(15 if build_configured else 0):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            break
        time.sleep(2)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.skip(f"llmctl binary not found at {path} (build it first, or set LLMCTL_BIN)")
    return path


@pytest.fixture(scope="session")
def llmctl(llmctl_bin):
    def _run(*args, timeout=120, check=False, input=None):
        rc, out, err = run_llmctl(llmctl_bin, *args, timeout=timeout, input=input)
        if check and rc != 0:
            pytest.fail(f"llmctl {' '.join(map(str, args))} failed (rc={rc}):\n{err}")
        return rc, out, err
    return _run


@pytest.fixture(scope="session")
def llmctl_json(llmctl):
    """Run a subcommand with --json appended, assert success, return parsed JSON."""
    def _run(*args, timeout=120):
        rc, out, err = llmctl(*args, "--json", timeout=timeout, check=True)
        try:
            return json.loads(out)
        except json.JSONDecodeError as e:
            pytest.fail(f"llmctl {' '.join(map(str, args))} --json printed invalid JSON ({e}):\n{out[:2000]}")
    return _run


@pytest.fixture(scope="session")
def tokenizer_corpus(tmp_path_factory):
    """~300 demo documents (English + Chinese) followed by the SFT sample conversations."""
    d = tmp_path_factory.mktemp("corpus")
    path = d / "tok_corpus.jsonl"
    head_lines(DEMO_TRAIN, TOKENIZER_DOCS, path)
    if os.path.exists(SFT_SAMPLE):
        with open(SFT_SAMPLE, encoding="utf-8") as f, open(path, "a", encoding="utf-8") as out:
            out.write(f.read())
    return str(path)


@pytest.fixture(scope="session")
def tokenizer_info(llmctl_json, tokenizer_corpus, tmp_path_factory):
    """(directory, --json summary) of the session tokenizer, trained once."""
    out = tmp_path_factory.mktemp("tokenizer") / "tok"
    summary = llmctl_json("train-tokenizer", "--data", tokenizer_corpus, "--out", out,
                          "--vocab-size", TOKENIZER_VOCAB, "--threads", 2)
    return str(out), summary


@pytest.fixture(scope="session")
def tokenizer_dir(tokenizer_info):
    out, summary = tokenizer_info
    assert summary["vocab_size"] == TOKENIZER_VOCAB, summary
    return out


@pytest.fixture(scope="session")
def heldout_slice(tmp_path_factory):
    return head_lines(DEMO_HELDOUT, 20, tmp_path_factory.mktemp("heldout") / "heldout20.jsonl")


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """name -> directory of each tiny random HF reference model (built once)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import gen_hf_reference
    root = tmp_path_factory.mktemp("hf_ref")
    return gen_hf_reference.build_all(str(root))


def assert_clean_error(rc, stderr, *needles):
    """A handled failure: exit code 1 and exactly one `llmctl: error:` line (which mentions
    every needle, e.g. the offending file or field), no crash/traceback/abort output."""
    assert rc == 1, f"expected exit code 1, got {rc}; stderr:\n{stderr}"
    for bad in ("terminate called", "Traceback", "Aborted", "Segmentation fault",
                "core dumped", "what():", "Exception raised from"):
        assert bad not in stderr, f"crash marker {bad!r} in stderr:\n{stderr}"
    errors = [l for l in stderr.splitlines() if l.startswith("llmctl: error:")]
    assert len(errors) == 1, f"want one 'llmctl: error:' line, got {len(errors)}:\n{stderr}"
    for n in needles:
        assert str(n) in errors[0], f"error line does not mention {n!r}: {errors[0]}"
    return errors[0]
