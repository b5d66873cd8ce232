#!/usr/bin/env python3
"""M3ToolEval-style evaluation of `llmctl agent`: multi-step tool tasks
(tools/bench/agent_tasks.jsonl, tools in tools/bench/agent_tools.py), scored by exact match
of the agent's final "Answer: ..." against the expected answer.

  # a model served by llmctl (or any OpenAI-compatible server already running):
  .venv/bin/python tools/bench/agent_eval.py --model runs/demo/sft/final
  .venv/bin/python tools/bench/agent_eval.py --endpoint http://127.0.0.1:8000
  # the harness itself: a scripted "oracle" model that runs each task's reference code
  # and answers with what the interpreter printed (checks tools, sandbox and scoring)
  .venv/bin/python tools/bench/agent_eval.py --oracle

Prints one line per task and the score; --json for one JSON object.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("llmctl serve exited with status %d" % proc.returncode)
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("llmctl serve did not become healthy in %d s" % timeout)


def oracle_replies(solution):
    # Turn 1: the reference code; turn 2: the answer read from the observation.
    def answer(messages):
        out = messages[-1]["content"].split("```\n", 1)[1].rsplit("```", 1)[0].strip()
        return "Answer: " + out
    return ["```python\n" + solution + "\n```", answer]


def run_task(binary, endpoint, task, args):
    cmd = [binary, "agent", "--endpoint", endpoint, "--tools", os.path.join(HERE, "agent_tools.py"),
           "--prompt", task["task"], "--json", "--max-turns", str(args.max_turns),
           "--temperature", str(args.temperature), "--max-new-tokens", str(args.max_new_tokens), "--seed", "0"]
    if args.unsafe_no_sandbox:
        cmd.append("--unsafe-no-sandbox")
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.task_timeout)
    if p.returncode != 0:
        return {"id": task["id"], "ok": False, "error": p.stderr.strip()[-300:], "seconds": time.time() - t0}
    r = json.loads(p.stdout)
    return {"id": task["id"], "ok": r["answer"] == task["answer"], "answer": r["answer"], "expected": task["answer"],
            "turns": len(r["turns"]), "finish": r["finish"], "seconds": round(time.time() - t0, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="serve this model dir with llmctl serve for the run")
    src.add_argument("--endpoint", help="an OpenAI-compatible server already running")
    src.add_argument("--oracle", action="store_true", help="scripted model replaying the reference solutions")
    ap.add_argument("--tasks", default=os.path.join(HERE, "agent_tasks.jsonl"))
    ap.add_argument("--bin", default=os.environ.get("LLMCTL_BIN", os.path.join(ROOT, "build", "llmctl")))
    ap.add_argument("--max-turns", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--task-timeout", type=float, default=600)
    ap.add_argument("--unsafe-no-sandbox", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tasks = [json.loads(l) for l in open(args.tasks) if l.strip()]

    results = []
    if args.oracle:
        from fake_openai import ScriptedServer
        for t in tasks:
            with ScriptedServer(oracle_replies(t["solution"]), model="oracle") as s:
                results.append(run_task(args.bin, s.url, t, args))
        label = "oracle (scripted reference solutions)"
    elif args.endpoint:
        results = [run_task(args.bin, args.endpoint, t, args) for t in tasks]
        label = args.endpoint
    else:
        port = free_port()
        url = "http://127.0.0.1:%d" % port
        proc = subprocess.Popen([args.bin, "serve", "--model", args.model, "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(url, proc)
            results = [run_task(args.bin, url, t, args) for t in tasks]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        label = args.model
    score = sum(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"model": label, "score": score, "tasks": len(results), "results": results}, indent=2))
    else:
        for r in results:
            print("%-16s %s  answer=%r expected=%r turns=%s %.1fs %s" % (
                r["id"], "PASS" if r["ok"] else "fail", r.get("answer"), r.get("expected"), r.get("turns"),
                r["seconds"], r.get("error", "")))
        print("%s: %d/%d exact match" % (label, score, len(results)))


if __name__ == "__main__":
    main()
