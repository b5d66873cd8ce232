"""Soak test of `llmctl serve` (loopback only, bounded: LLMCTL_SOAK_S seconds, default 60):
64 concurrent streaming clients on chat and completions, with random cancellations
(clients that hang up mid-stream) and bad requests mixed in. Afterwards: no crash, every
good request ended with a finish reason and [DONE], every bad one got a 4xx OpenAI error,
and the metrics are back to 0 blocks used, nothing running or waiting.
"""
import http.client
import json
import os
import random
import threading
import time

import pytest
from serve_helpers import serve
from test_serve import hang_up, metrics, wait_for

CLIENTS = 64
SOAK_S = float(os.environ.get("LLMCTL_SOAK_S", "60"))

BAD_BODIES = [
    b"{", b"[]", b"null", b'{"messages": []}', b'{"messages": "x"}', b'{"prompt": ""}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
    b'{"messages": [{"role": "user", "content": "hi"}], "n": 99}',
    b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}',
    b'{"model": "other", "prompt": "x"}', b'{"prompt": [99999999]}',
]


@pytest.fixture(scope="module")
def soak_model(llmctl_json, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("soak") / "nano-soak"
    llmctl_json("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", out, "--seed", 4)
    return str(out)


class Client(threading.Thread):
    def __init__(self, port, seed, deadline):
        super().__init__(daemon=True)
        self.port, self.rng, self.deadline = port, random.Random(seed), deadline
        self.good = self.cancelled = self.bad = 0
        self.failures = []

    def run(self):
        while time.monotonic() < self.deadline and len(self.failures) < 5:
            try:
                r = self.rng.random()
                if r < 0.15:
                    self.bad_request()
                else:
                    self.stream(cancel=r < 0.35)
            except Exception as e:  # noqa: BLE001 - every failure is reported at the end
                self.failures.append(repr(e))

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def bad_request(self):
        c = self.conn()
        path = self.rng.choice(["/v1/chat/completions", "/v1/completions"])
        c.request("POST", path, self.rng.choice(BAD_BODIES), {"Content-Type": "application/json"})
        resp = c.getresponse()
        body = resp.read()
        c.close()
        if not (400 <= resp.status < 500) or "error" not in json.loads(body):
            self.failures.append(f"bad request got {resp.status}: {body[:200]!r}")
        self.bad += 1

    def stream(self, cancel):
        chat = self.rng.random() < 0.5
        body = {"max_tokens": self.rng.randint(4, 64), "temperature": self.rng.choice([0, 0.8]), "stream": True,
                "stream_options": {"include_usage": True}}
        words = " ".join(self.rng.choice(["the", "cat", "sat", "on", "a", "mat", "and", "dog"])
                         for _ in range(self.rng.randint(1, 60)))
        if chat:
            body["messages"] = [{"role": "user", "content": words}]
        else:
            body["prompt"] = words
        c = self.conn()
        c.request("POST", "/v1/chat/completions" if chat else "/v1/completions", json.dumps(body),
                  {"Content-Type": "application/json"})
        resp = c.getresponse()
        if resp.status != 200:
            self.failures.append(f"good request got {resp.status}: {resp.read()[:200]!r}")
            c.close()
            return
        stop_after = self.rng.randint(1, 6) if cancel else None
        events, finish, done = 0, None, False
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                self.failures.append(f"error event: {ev}")
                break
            events += 1
            if ev["choices"] and ev["choices"][0]["finish_reason"]:
                finish = ev["choices"][0]["finish_reason"]
            if stop_after is not None and events >= stop_after:
                hang_up(c)
                self.cancelled += 1
                return
        c.close()
        if not done or finish not in ("stop", "length"):
            self.failures.append(f"stream ended without [DONE]/finish: done={done} finish={finish}")
        else:
            self.good += 1


def test_soak(llmctl_bin, soak_model, tmp_path):
    gen = serve(llmctl_bin, soak_model, tmp_path / "serve.log", "--threads", 2, "--kv-cache-gb", 0.25,
                "--max-num-seqs", 64, "--max-queue", 64)
    srv = next(gen)
    try:
        deadline = time.monotonic() + SOAK_S
        clients = [Client(srv.port, seed, deadline) for seed in range(CLIENTS)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=SOAK_S + 180)
        assert not any(c.is_alive() for c in clients), "a client hung"
        failures = [f for c in clients for f in c.failures]
        good = sum(c.good for c in clients)
        assert not failures, f"{len(failures)} failures, e.g. {failures[:5]}"
        assert srv.proc.poll() is None, "the server died"
        assert good >= CLIENTS and sum(c.cancelled for c in clients) > 0 and sum(c.bad for c in clients) > 0
        wait_for(lambda: metrics(srv.url)["llmctl_requests_running"] == 0, "running to drop to 0", timeout=30)
        m = metrics(srv.url)
        assert m["llmctl_kv_blocks_used"] == 0 and m["llmctl_requests_waiting"] == 0, m
        assert m['llmctl_requests_finished_total{finished_reason="cancelled"}'] > 0
        assert m['llmctl_requests_finished_total{finished_reason="error"}'] == 0
        print(f"soak: {good} good, {sum(c.cancelled for c in clients)} cancelled, "
              f"{sum(c.bad for c in clients)} bad requests in {SOAK_S:.0f} s")
    finally:
        with pytest.raises(StopIteration):
            next(gen)
