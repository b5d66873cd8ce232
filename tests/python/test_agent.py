"""`llmctl agent` end to end: the CodeAct loop driven by a scripted OpenAI-compatible
server (tests/python/fake_openai.py), so every branch runs without a capable model.
The sandbox itself is tested against hostile code in tests/unit/test_sandbox.cpp; here
the same cases go through the binary to show the agent survives them and keeps serving."""
import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, assert_clean_error
from fake_openai import ScriptedServer

TOOLS = os.path.join(ROOT, "examples", "agent", "tools.py")


def have_sandbox():
    if not shutil.which("bwrap"):
        return False
    return subprocess.run(["bwrap", "--unshare-user", "--unshare-net", "--ro-bind", "/", "/", "true"],
                          capture_output=True).returncode == 0


SANDBOX_FLAGS = [] if have_sandbox() else ["--unsafe-no-sandbox"]


def agent(llmctl, server, *args, input=None, timeout=120):
    return llmctl("agent", "--endpoint", server.url, *SANDBOX_FLAGS, *args, input=input, timeout=timeout)


def test_seed_task_derivative_with_tools(llmctl, tmp_path):
    """The seed's task: derivative of x*ln(x) at pi (= ln(pi) + 1 = 2.1447) through the
    shipped derivative tool, over two code turns, with a transcript."""
    replies = [
        "I will use the derivative tool.\n```python\nimport math\nd = derivative(lambda x: x * math.log(x), math.pi)\nprint(d)\n```",
        # Answers from what the interpreter printed, as a real model would.
        lambda msgs: "```python\nprint(round(d, 4))\n```",
        lambda msgs: "The derivative of x ln x at pi is about " + msgs[-1]["content"].split("```\n")[1].split("\n")[0]
                     + ".\nAnswer: " + msgs[-1]["content"].split("```\n")[1].split("\n")[0],
    ]
    transcript = tmp_path / "t.jsonl"
    with ScriptedServer(replies) as s:
        rc, out, err = agent(llmctl, s, "--tools", TOOLS, "--prompt", "What is the derivative of x*ln(x) at pi?",
                             "--json", "--transcript", str(transcript), "--temperature", "0", "--seed", "3")
        assert rc == 0, err
        r = json.loads(out)
        assert r["answer"] == "2.1447" and r["finish"] == "answer"
        assert abs(float(r["answer"]) - (math.log(math.pi) + 1)) < 1e-4
        assert [t["status"] for t in r["turns"]] == ["ok", "ok", "answer"]
        # The model got the tools as stubs in the system prompt and the outputs back.
        first = s.requests[0]
        assert first["stream"] is True and first["temperature"] == 0 and first["seed"] == 3
        system = first["messages"][0]
        assert system["role"] == "system" and "def derivative(f, x, h=1e-05):" in system["content"]
        assert "central difference" in system["content"]
        assert s.requests[1]["messages"][-1]["content"].startswith("Execution output:\n```\n2.1447")
    records = [json.loads(l) for l in transcript.read_text().splitlines()]
    assert [r["event"] for r in records] == ["task", "turn", "turn", "turn", "final"]
    turn1 = records[1]
    assert turn1["code"] and "derivative" in turn1["code"][0] and turn1["exec_s"] >= 0 and turn1["model_s"] >= 0
    # The transcript's messages replay the whole conversation, system prompt first.
    msgs = [m for r in records for m in r.get("messages", [])]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert records[-1]["answer"] == "2.1447"


def test_repl_keeps_state_across_turns_and_reset_forgets(llmctl):
    replies = ["```python\nsecret = 'abc'\ncount = 1\n```", "Stored. Answer: ok",
               "```python\ncount = count + 1\nprint(secret, count)\n```", "Answer: abc 2",
               "```python\nprint(secret)\n```", "Answer: gone"]
    with ScriptedServer(replies) as s:
        rc, out, err = agent(llmctl, s, input="store it\nshow it\n/reset\nshow again\n/exit\nnever sent\n")
        assert rc == 0, err
    assert "abc 2" in out  # variables (also a reassigned one) survived across user turns
    assert "NameError" in out  # /reset gave a fresh interpreter
    assert len(s.requests) == 6  # nothing after /exit
    # After /reset the conversation starts again: system + the new task only.
    assert [m["role"] for m in s.requests[4]["messages"]] == ["system", "user"]


@pytest.mark.parametrize("code,expect", [
    ("while True:\n    pass", "was killed"),
    ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", "restarted"),
    ("import sys\nfor _ in range(256):\n    sys.stdout.write('y' * (1 << 20))", "output cut"),
    ("x = bytearray(8 * 1024 ** 3)", "MemoryError"),
])
def test_hostile_code_is_contained_and_the_agent_goes_on(llmctl, code, expect):
    replies = ["```python\n" + code + "\n```", "```python\nprint('still here', 6 * 7)\n```", "Answer: 42"]
    with ScriptedServer(replies) as s:
        rc, out, err = agent(llmctl, s, "--prompt", "misbehave", "--json", "--timeout", "3", "--output-limit", "4096")
        assert rc == 0, err
        r = json.loads(out)
        assert r["answer"] == "42"
        assert expect in r["turns"][0]["output"], r["turns"][0]["output"][:500]
        assert len(r["turns"][0]["output"]) < 4096 + 600
        assert "still here 42" in r["turns"][1]["output"]


@pytest.mark.skipif(not have_sandbox(), reason="bubblewrap cannot create namespaces here")
def test_sandboxed_code_has_no_network_and_no_host_files(llmctl, tmp_path):
    with ScriptedServer([]) as s:
        # The scripted server listens on the host's loopback: the code must not reach it.
        port = int(s.url.rsplit(":", 1)[1])
        code = ("import socket, os\n"
                "try:\n    socket.create_connection(('127.0.0.1', %d), timeout=2)\n    print('NET OPEN')\n"
                "except OSError:\n    print('no network')\n"
                "print('home', os.path.exists(%r))\n"
                "open('made_here.txt', 'w').write('hi')\n") % (port, str(tmp_path))
        s.replies += ["```python\n" + code + "```", "Answer: done"]
        # Under /tmp: when the tests run as root the code runs as nobody, which must reach it.
        parent = Path(tempfile.mkdtemp(dir="/tmp", prefix="llmctl-agent-test-"))
        os.chmod(parent, 0o755)
        workdir = parent / "work"
        rc, out, err = agent(llmctl, s, "--prompt", "probe", "--json", "--workdir", str(workdir))
        assert rc == 0, err
        output = json.loads(out)["turns"][0]["output"]
        assert "no network" in output and "NET OPEN" not in output
        assert "home False" in output
        assert (workdir / "made_here.txt").read_text() == "hi"  # --workdir is kept and shared
        shutil.rmtree(parent)
        if os.geteuid() == 0:  # a dir nobody cannot reach: said up front, not a dead interpreter
            rc, out, err = agent(llmctl, s, "--prompt", "probe", "--workdir", str(tmp_path / "work"))
            assert_clean_error(rc, err, "--workdir", "uid 65534")


def test_max_turns_stops_a_looping_model(llmctl):
    with ScriptedServer(["```python\nprint(1)\n```"] * 5) as s:
        rc, out, err = agent(llmctl, s, "--prompt", "loop", "--json", "--max-turns", "2")
        assert rc == 0, err
        r = json.loads(out)
        assert r["finish"] == "max_turns" and len(r["turns"]) == 2
        assert len(s.requests) == 2


def test_streams_text_while_the_model_writes(llmctl):
    with ScriptedServer(["Thinking about it... no code needed.\nAnswer: 7"]) as s:
        rc, out, err = agent(llmctl, s, "--prompt", "what is 3+4?")
        assert rc == 0, err
        assert "Thinking about it... no code needed." in out and "Answer: 7" in out
        assert "sandbox" in err or "NO SANDBOX" in err  # says how code is isolated


def test_clear_errors(llmctl, tmp_path):
    rc, out, err = llmctl("agent", "--endpoint", "http://127.0.0.1:9", *SANDBOX_FLAGS, "--prompt", "x")
    assert_clean_error(rc, err, "127.0.0.1:9")
    rc, out, err = llmctl("agent", "--endpoint", "ftp://x", "--prompt", "x")
    assert_clean_error(rc, err, "http://")
    rc, out, err = llmctl("agent", "--prompt", "x")
    assert_clean_error(rc, err, "--model")
    bad = tmp_path / "bad_tools.py"
    bad.write_text("def broken(:\n")
    with ScriptedServer([]) as s:
        rc, out, err = agent(llmctl, s, "--tools", str(bad), "--prompt", "x")
        assert_clean_error(rc, err, "tools")
    # Without bubblewrap the agent refuses unless told otherwise, and says so.
    env = dict(os.environ, PATH="/nonexistent")
    p = subprocess.run([os.environ.get("LLMCTL_BIN", os.path.join(ROOT, "build", "llmctl")), "agent",
                        "--endpoint", "http://127.0.0.1:9", "--prompt", "x"], capture_output=True, text=True, env=env)
    assert_clean_error(p.returncode, p.stderr, "bubblewrap", "--unsafe-no-sandbox")


def test_server_error_is_reported(llmctl):
    # The server rejects every request (e.g. an unknown model name).
    with ScriptedServer([]) as s:
        s.httpd.RequestHandlerClass.do_POST = lambda self: self._send(400, json.dumps({"error": {"message": "bad model"}}))
        rc, out, err = agent(llmctl, s, "--prompt", "x")
        assert_clean_error(rc, err, "400", "bad model")


def test_in_process_model(llmctl, tokenizer_dir, tmp_path):
    """--model runs the engine in-process (a random nano model: it rarely writes code, but
    the loop must run to an answer or the turn limit and record it)."""
    model = tmp_path / "nano"
    rc, out, err = llmctl("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", str(model))
    assert rc == 0, err
    rc, out, err = llmctl("agent", "--model", str(model), *SANDBOX_FLAGS, "--prompt", "add 2 and 3", "--json",
                          "--max-turns", "2", "--max-new-tokens", "24", "--temperature", "0")
    assert rc == 0, err
    r = json.loads(out)
    assert r["finish"] in ("answer", "max_turns") and 1 <= len(r["turns"]) <= 2
    assert r["turns"][0]["assistant"] == r["final"] or r["finish"] == "max_turns"


def test_ctrl_c_stops_running_code_and_the_session_goes_on(llmctl_bin):
    """SIGINT while a block runs kills that execution only: the REPL takes the next task,
    and at /exit the default work dir is removed."""
    import re
    import signal
    import time
    replies = ["```python\nimport time\nprint('sleeping', flush=True)\ntime.sleep(60)\n```",
               "```python\nprint('second task ran')\n```", "Answer: fine"]
    with ScriptedServer(replies) as s:
        p = subprocess.Popen([llmctl_bin, "agent", "--endpoint", s.url, *SANDBOX_FLAGS, "--timeout", "120"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.stdin.write("first\n")
        p.stdin.flush()
        deadline = time.time() + 30
        while len(s.requests) < 1 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the block is sleeping in the interpreter now
        t0 = time.time()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate("second\n/exit\n", timeout=60)
        assert p.returncode == 0, err
        assert time.time() - t0 < 30, "Ctrl-C did not stop the 60 s block"
    assert "interrupted" in out and "Ctrl-C" in out
    assert "second task ran" in out
    m = re.search(r"work dir (\S+);", err)
    assert m, err
    assert not os.path.exists(m.group(1)), "the temp work dir is removed at exit"
