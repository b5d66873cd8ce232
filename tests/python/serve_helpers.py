"""Starting `llmctl serve` for tests: on a free loopback port, waiting (bounded) for
GET /health, stopped with SIGTERM (kill after 10 s) and its exit code checked.

``serve(binary, model, log_path, *extra_flags, key=None)`` is a generator for fixtures;
``Server`` is the object it yields (``.url``, ``.port``, ``.proc``, ``.output()``, ``.stop()``).
"""
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url, key=None):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


class Server:
    """`llmctl serve` on a free port; stop() sends SIGTERM (kill after 10 s), returns the exit code."""

    def __init__(self, binary, model, log_path, *extra, key=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        defaults = {"--threads": 1, "--kv-cache-gb": 0.05}
        cmd = [binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", self.port]
        for flag, value in defaults.items():
            if flag not in extra:
                cmd += [flag, value]
        cmd += list(extra)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([str(c) for c in cmd], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while http_status(self.url + "/health", key) != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rc = self.stop()
                pytest.fail(f"llmctl serve did not answer GET /health with 200 within 60 s "
                            f"(exit code: {rc}):\n{self.output()}")
            time.sleep(0.25)

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self):
        self.log.close()  # (the server writes to its own copy of the descriptor)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                return "killed after SIGTERM did not end it within 10 s"
        return self.proc.returncode


def serve(binary, model, log_path, *extra, key=None):
    server = Server(binary, model, log_path, *extra, key=key)
    yield server
    rc = server.stop()
    assert rc == 0, f"llmctl serve after SIGTERM: {rc}\n{server.output()}"


