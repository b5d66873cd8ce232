"""A scripted OpenAI-compatible chat server for driving `llmctl agent` in tests.

``ScriptedServer(replies)`` answers POST /v1/chat/completions with the next reply of the
script (streamed as SSE chunks when the request asks for stream=true, split into a few
pieces so the client has to reassemble them), GET /v1/models with one model, and records
every request body in ``.requests``. A reply that is a callable gets the request's
messages and returns the text (to answer from what the agent sent back).
Binds 127.0.0.1 on a free port; use as a context manager.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    def __init__(self, replies, model="scripted"):
        self.replies = list(replies)
        self.model = model
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body, ctype="application/json"):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": outer.model, "object": "model"}]}))
                else:
                    self._send(404, json.dumps({"error": {"message": "not found"}}))

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                with outer.lock:
                    outer.requests.append(body)
                    reply = outer.replies.pop(0) if outer.replies else "I have nothing more to say. Answer: none"
                if callable(reply):
                    reply = reply(body["messages"])
                if not body.get("stream"):
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion", "model": outer.model,
                                                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                                             "finish_reason": "stop"}]}))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                pieces = [reply[i:i + 7] for i in range(0, len(reply), 7)] or [""]
                for p in pieces:
                    chunk = {"id": "x", "object": "chat.completion.chunk", "model": outer.model,
                             "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                    self.wfile.write(("data: " + json.dumps(chunk) + "\n\n").encode())
                    self.wfile.flush()
                end = {"id": "x", "object": "chat.completion.chunk", "model": outer.model,
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                self.wfile.write(("data: " + json.dumps(end) + "\n\ndata: [DONE]\n\n").encode())
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
