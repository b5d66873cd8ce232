"""`llmctl serve` against the official `openai` Python client and raw HTTP, on a tiny model:
the OpenAI wire format (chat, completions, streaming, usage, logprobs, n, seed, stop),
answers equal to `llmctl chat`'s (same engine, greedy), /metrics, /tokenize, and the hard
edges: bad input, API key, overload (429), disconnects freeing KV blocks, timeouts, SIGTERM.
The soak test is in test_serve_soak.py.
"""
import http.client
import json
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
from serve_helpers import Server, serve

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def model(llmctl_json, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "nano-serve"
    llmctl_json("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", out, "--seed", 3)
    return str(out)


@pytest.fixture(scope="module")
def server(llmctl_bin, model, tmp_path_factory):
    yield from serve(llmctl_bin, model, tmp_path_factory.mktemp("serve_log") / "serve.log",
                     "--max-body", 65536)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


NAME = "nano-serve"
MSG = [{"role": "user", "content": "hello there"}]


# ---- raw HTTP helpers --------------------------------------------------------------------

def request(url, method="GET", body=None, headers=None, timeout=60):
    """(status, headers, body bytes) of one request; never raises on HTTP errors."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except OSError:  # refused / reset: no server there (any more)
        return None, None, b""


def assert_error(status, body, want_status, param=None, needle=None):
    assert status == want_status, (status, body)
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["message"] and err["type"], err
    if param is not None:
        assert err["param"] == param, err
    if needle:
        assert needle in err["message"], err
    return err


def metrics(url):
    _, _, body = request(url + "/metrics")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def wait_for(cond, what, timeout=20):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def open_stream(url, body, path="/v1/completions"):
    """Starts a streaming request on its own connection; returns (connection, response)."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", path, json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def hang_up(conn):
    """The client goes away: the socket is shut down whatever else still refers to it."""
    try:
        conn.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def idle(url):
    m = metrics(url)
    return m["llmctl_kv_blocks_used"] == 0 and m["llmctl_requests_running"] == 0 and m["llmctl_requests_waiting"] == 0


def sse_events(resp):
    """Parsed `data:` events of an SSE response ('[DONE]' as the string)."""
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        yield data if data == "[DONE]" else json.loads(data)


# ---- the OpenAI surface ------------------------------------------------------------------

def test_models(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    assert request(server.url + "/health")[0] == 200


def test_greedy_chat_equals_llmctl_chat(client, llmctl_json, model):
    r = client.chat.completions.create(model=NAME, messages=MSG, temperature=0, max_tokens=24)
    cli = llmctl_json("chat", "--model", model, "--prompt", "hello there", "--temperature", 0,
                      "--max-new-tokens", 24, "--json")
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content == cli["text"]
    assert c.finish_reason == cli["finish_reason"]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == NAME
    assert r.usage.prompt_tokens == len(cli["prompt_token_ids"])
    assert r.usage.completion_tokens == len(cli["output_token_ids"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_whole_answer(client):
    # long enough (> 1 KV block of 16 tokens) for the prefix cache to serve the second time
    msg = [{"role": "system", "content": "you are a helpful assistant who answers briefly"}, *MSG]
    whole = client.chat.completions.create(model=NAME, messages=msg, temperature=0, max_tokens=30)
    chunks = list(client.chat.completions.create(model=NAME, messages=msg, temperature=0, max_tokens=30,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # The second identical prompt came from the prefix cache.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0


def test_completions_whole_stream_and_token_prompts(client, server):
    r = client.completions.create(model=NAME, prompt="once upon a time", temperature=0, max_tokens=12)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=NAME, prompt="once upon a time", temperature=0, max_tokens=12, stream=True))
    assert streamed == r.choices[0].text
    _, _, body = request(server.url + "/tokenize", "POST", {"prompt": "once upon a time"})
    ids = json.loads(body)["tokens"]
    by_ids = client.completions.create(model=NAME, prompt=ids, temperature=0, max_tokens=12)
    assert by_ids.choices[0].text == r.choices[0].text
    # a batch of prompts: one choice each, in order
    batch = client.completions.create(model=NAME, prompt=["once upon a time", "hello"], temperature=0, max_tokens=12)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == r.choices[0].text
    _, _, body = request(server.url + "/detokenize", "POST", {"tokens": ids})
    assert json.loads(body)["prompt"] == "once upon a time"


def test_max_tokens_and_length_finish(client):
    r = client.chat.completions.create(model=NAME, messages=MSG, max_completion_tokens=3,
                                       temperature=1, seed=1, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_seed_n_and_sampling_fields(client):
    kw = dict(model=NAME, messages=MSG, temperature=1.0, top_p=0.95, max_tokens=20, seed=7,
              presence_penalty=0.5, frequency_penalty=0.2, user="tester",
              extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1})
    a = client.chat.completions.create(n=3, **kw)
    b = client.chat.completions.create(n=3, **kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1, "n choices should differ (seed + index)"


def test_stop_string_never_in_output(client):
    free = client.completions.create(model=NAME, prompt="the", temperature=0, max_tokens=40,
                                     extra_body={"ignore_eos": True}).choices[0].text
    assert len(free) > 4
    stop = free[2:4]
    r = client.completions.create(model=NAME, prompt="the", temperature=0, max_tokens=40, stop=[stop, "zzzz"])
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].text and free.startswith(r.choices[0].text)


def test_logprobs(client):
    r = client.chat.completions.create(model=NAME, messages=MSG, temperature=0, max_tokens=6,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5
        assert bytes(t.bytes) == t.token.encode()
    c = client.completions.create(model=NAME, prompt="the", temperature=0, max_tokens=4, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    # streamed: the offsets continue across chunks
    offsets = [o for ch in client.completions.create(model=NAME, prompt="the", temperature=0, max_tokens=4,
                                                     logprobs=2, stream=True)
               if ch.choices and ch.choices[0].logprobs for o in ch.choices[0].logprobs.text_offset]
    assert len(offsets) == 4 and offsets == sorted(offsets), offsets


def test_metrics_and_tokenize(server, client):
    client.chat.completions.create(model=NAME, messages=MSG, temperature=0, max_tokens=5)
    m = metrics(server.url)
    assert m["llmctl_kv_blocks_total"] > 0 and m["llmctl_kv_blocks_used"] == 0
    assert m["llmctl_requests_running"] == 0 and m["llmctl_requests_waiting"] == 0
    assert m["llmctl_generation_tokens_total"] > 0
    assert m["llmctl_time_to_first_token_seconds_count"] > 0
    assert m['llmctl_time_to_first_token_seconds_bucket{le="+Inf"}'] == m["llmctl_time_to_first_token_seconds_count"]
    assert 0 < m["llmctl_prefix_cache_hit_rate"] <= 1
    _, _, body = request(server.url + "/tokenize", "POST", {"messages": MSG})
    t = json.loads(body)
    assert t["count"] == len(t["tokens"]) > 2 and t["max_model_len"] > 0


# ---- hard edges --------------------------------------------------------------------------

BAD_REQUESTS = [
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "max_tokens": -5}, "max_tokens"),
    ({"messages": MSG, "max_tokens": 10 ** 9}, "max_tokens"),
    ({"messages": MSG, "max_tokens": "ten"}, "max_tokens"),
    ({"messages": MSG, "temperature": "hot"}, "temperature"),
    ({"messages": MSG, "temperature": 5}, "temperature"),
    ({"messages": MSG, "top_p": 0}, "top_p"),
    ({"messages": MSG, "n": 1000}, "n"),
    ({"messages": MSG, "n": 0}, "n"),
    ({"messages": MSG, "stop": 3}, "stop"),
    ({"messages": MSG, "stop": [""]}, "stop"),
    ({"messages": MSG, "seed": 1.5}, "seed"),
    ({"messages": MSG, "stream": "yes"}, "stream"),
    ({"messages": MSG, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": MSG, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": MSG, "logprobs": True, "top_logprobs": 99}, "top_logprobs"),
    ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": MSG, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": MSG, "logit_bias": {"5": 10}}, "logit_bias"),
]


@pytest.mark.parametrize("body,param", BAD_REQUESTS, ids=[p for _, p in BAD_REQUESTS])
def test_bad_chat_requests_are_400(server, body, param):
    status, _, raw = request(server.url + "/v1/chat/completions", "POST", body)
    assert_error(status, raw, 400, param=param)


def test_bad_input_beyond_fields(server, client):
    url = server.url + "/v1/chat/completions"
    assert_error(*request(url, "POST", b"{not json")[::2], 400)
    assert_error(*request(url, "POST", b"[1, 2]")[::2], 400)
    assert_error(*request(url, "POST", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}')[::2], 400,
                 needle="UTF-8")
    assert_error(*request(url, "POST", {"model": "gpt-4", "messages": MSG})[::2], 404, param="model")
    big = {"messages": [{"role": "user", "content": "x" * 100000}]}
    assert_error(*request(url, "POST", big)[::2], 413)
    long_prompt = {"messages": [{"role": "user", "content": " ".join(["hello"] * 3000)}]}
    err = assert_error(*request(url, "POST", long_prompt)[::2], 400, param="messages")
    assert err["code"] == "context_length_exceeded"
    comp = server.url + "/v1/completions"
    assert_error(*request(comp, "POST", {"prompt": [10 ** 7]})[::2], 400, param="prompt")
    assert_error(*request(comp, "POST", {"prompt": ""})[::2], 400, param="prompt")
    assert_error(*request(comp, "POST", {"prompt": "x", "echo": True})[::2], 400, param="echo")
    assert_error(*request(server.url + "/v1/nothing", "POST", {})[::2], 404)
    assert_error(*request(server.url + "/detokenize", "POST", {"tokens": [-1]})[::2], 400, param="tokens")
    # The official client turns them into its exceptions.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=[], max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG, max_tokens=4)
    # ... and the server is fine afterwards.
    assert client.chat.completions.create(model=NAME, messages=MSG, max_tokens=2).choices


def test_api_key(llmctl_bin, model, tmp_path):
    gen = serve(llmctl_bin, model, tmp_path / "serve.log", "--api-key", "s3cret", key="s3cret")
    srv = next(gen)
    try:
        for key in (None, "wrong", "s3cre", "s3crett"):
            headers = {"Authorization": "Bearer " + key} if key else {}
            status, hdrs, raw = request(srv.url + "/v1/models", headers=headers)
            assert_error(status, raw, 401)
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.chat.completions.create(model=NAME, messages=MSG, max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="bad", max_retries=0).models.list()
        assert request(srv.url + "/health")[0] == 200  # probes need no key
        assert request(srv.url + "/tokenize", "POST", {"prompt": "x"})[0] == 401
        assert "s3cret" not in srv.output(), "the key must not appear in the log"
    finally:
        with pytest.raises(StopIteration):
            next(gen)


LONG = {"prompt": "the", "max_tokens": 1500, "ignore_eos": True, "temperature": 1}


def test_overload_is_429_with_retry_after(llmctl_bin, model, tmp_path):
    gen = serve(llmctl_bin, model, tmp_path / "serve.log", "--max-num-seqs", 1, "--max-queue", 1)
    srv = next(gen)
    try:
        streams = [open_stream(srv.url, LONG) for _ in range(2)]  # one runs, one waits
        for _, resp in streams:
            assert resp.status == 200
        status, headers, raw = request(srv.url + "/v1/completions", "POST", LONG)
        assert_error(status, raw, 429)
        assert headers["Retry-After"] == "1"
        for conn, _ in streams:
            hang_up(conn)
        wait_for(lambda: idle(srv.url), "both sequences to be cancelled")
        assert request(srv.url + "/v1/completions", "POST", {"prompt": "the", "max_tokens": 2})[0] == 200
    finally:
        with pytest.raises(StopIteration):
            next(gen)


def test_disconnect_frees_the_sequence(server):
    before = metrics(server.url)
    conn, resp = open_stream(server.url, LONG)
    events = sse_events(resp)
    for _ in range(5):
        next(events)
    assert metrics(server.url)["llmctl_requests_running"] == 1
    hang_up(conn)  # the client goes away mid-stream
    wait_for(lambda: idle(server.url), "the sequence to end", timeout=10)
    after = metrics(server.url)
    assert after["llmctl_kv_blocks_used"] == 0
    key = 'llmctl_requests_finished_total{finished_reason="cancelled"}'
    assert after[key] == before[key] + 1
    # far fewer than the 1500 tokens asked for were generated
    assert after["llmctl_generation_tokens_total"] - before["llmctl_generation_tokens_total"] < 1000


def test_request_timeout(llmctl_bin, model, tmp_path):
    gen = serve(llmctl_bin, model, tmp_path / "serve.log", "--request-timeout", 0.5)
    srv = next(gen)
    try:
        status, _, raw = request(srv.url + "/v1/completions", "POST", LONG)
        assert_error(status, raw, 504)
        conn, resp = open_stream(srv.url, LONG)
        events = list(sse_events(resp))
        assert events[-1] == "[DONE]" and "error" in events[-2], events[-2:]
        conn.close()
        # (the engine thread frees the blocks just after the error event goes out)
        wait_for(lambda: metrics(srv.url)["llmctl_kv_blocks_used"] == 0, "the timed-out blocks to be freed",
                 timeout=10)
    finally:
        with pytest.raises(StopIteration):
            next(gen)


def test_sigterm_finishes_streams_then_exits_0(llmctl_bin, model, tmp_path):
    srv = Server(llmctl_bin, model, tmp_path / "serve.log")
    body = {"prompt": "the", "max_tokens": 2000, "ignore_eos": True, "temperature": 0}
    conn, resp = open_stream(srv.url, body)
    events = sse_events(resp)
    next(events)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    # draining: probes and new requests are refused, the stream in flight goes on
    assert_error(*request(srv.url + "/health")[::2], 503)
    status, headers, raw = request(srv.url + "/v1/completions", "POST", {"prompt": "the", "max_tokens": 2})
    assert_error(status, raw, 503)
    assert headers["Retry-After"] == "1"
    rest = list(events)
    assert rest[-1] == "[DONE]" and rest[-2]["choices"][0]["finish_reason"] == "length"
    conn.close()
    assert srv.proc.wait(timeout=20) == 0
    assert "server stopped" in srv.output()


def test_sigterm_grace_cancels_what_is_left(llmctl_bin, model, tmp_path):
    srv = Server(llmctl_bin, model, tmp_path / "serve.log", "--shutdown-grace", 0.2)
    conn, resp = open_stream(srv.url, {**LONG, "max_tokens": 2000 - 8})
    events = sse_events(resp)
    next(events)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rest = list(events)
    assert rest[-1] == "[DONE]" and "error" in rest[-2]
    conn.close()
    assert srv.proc.wait(timeout=20) == 0
    assert time.monotonic() - t0 < 15


def test_agent_over_llmctl_serve_equals_in_process(llmctl, server, model):
    """`llmctl agent --endpoint` against this server answers, greedily, exactly what
    `llmctl agent --model` computes in-process (same chat rendering, same tokens)."""
    from test_agent import SANDBOX_FLAGS
    common = ["--prompt", "hello there", "--json", "--max-turns", "1", "--max-new-tokens", "16",
              "--temperature", "0", *SANDBOX_FLAGS]
    rc, out, err = llmctl("agent", "--endpoint", server.url, "--model-name", NAME, *common)
    assert rc == 0, err
    served = json.loads(out)
    rc, out, err = llmctl("agent", "--model", model, *common)
    assert rc == 0, err
    local = json.loads(out)
    assert served["turns"][0]["assistant"] == local["turns"][0]["assistant"]
    assert served["turns"][0]["assistant"]  # the random model said something
