"""The chat page that `llmctl serve` serves at GET / (src/serve/web/chat.html), driven in
headless Chromium through selenium against the real server and a tiny random model:
the model name from /v1/models, streamed answers with the sliders' values in the request,
history kept and cleared, Stop keeping the partial answer, and the API key.

Skipped when selenium, chromium or chromedriver is missing (nothing is ever downloaded).
"""
import json
import os
import shutil
import time
import urllib.error
import urllib.request

import pytest
from serve_helpers import serve

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    pytest.skip("selenium is not installed", allow_module_level=True)

CHROMIUM = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("headless browser tests need chromium and chromedriver on PATH", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGE = os.path.join(ROOT, "src", "serve", "web", "chat.html")
ANSWER_TIMEOUT = 120  # s for one streamed answer of the nano model on a busy CPU
API_KEY = "testkey"


@pytest.fixture(scope="module")
def web_model(llmctl_json, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_web") / "nano-web"
    llmctl_json("init", "--preset", "nano", "--tokenizer", tokenizer_dir, "--out", out, "--seed", 2)
    return str(out)


def error_message(url, key=None, body=None):
    """error.message of the server's refusal of this request (which must be refused)."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    req = urllib.request.Request(url, headers=headers, data=json.dumps(body).encode() if body else None)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30).close()
    return json.loads(e.value.read())["error"]["message"]


@pytest.fixture(scope="module")
def server(llmctl_bin, web_model, tmp_path_factory):
    yield from serve(llmctl_bin, web_model, tmp_path_factory.mktemp("serve_log") / "serve.log")


@pytest.fixture(scope="module")
def key_server(llmctl_bin, web_model, tmp_path_factory):
    yield from serve(llmctl_bin, web_model, tmp_path_factory.mktemp("serve_key_log") / "serve.log",
                     "--api-key", API_KEY, key=API_KEY)


@pytest.fixture(scope="module")
def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    except WebDriverException as e:
        pytest.skip(f"headless chromium does not start: {e.msg}")
    d.set_page_load_timeout(30)
    d.set_script_timeout(30)
    yield d
    d.quit()


# ---- page helpers ----------------------------------------------------------------------

def js(d, script, *args):
    return d.execute_script(script, *args)


def wait(d, cond, what, timeout=30):
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.1).until(lambda _: cond())
    except TimeoutException:
        pytest.fail(f"timed out after {timeout} s waiting for {what}; #status: {text_of(d, 'status')!r}")


def text_of(d, id_):
    return js(d, "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;", id_)


def set_slider(d, id_, value):
    """Set a range input the way a drag does: new value, then an 'input' event."""
    js(d, "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
          "e.dispatchEvent(new Event('input', {bubbles: true}));", id_, str(value))
    label = js(d, "return document.querySelector('output[for=\"' + arguments[0] + '\"]').textContent;", id_)
    assert float(label) == float(value), f"#{id_} shows {label!r} after being set to {value}"


def assistant_states(d):
    """[{text, done, finish}] of the assistant messages, oldest first."""
    return js(d, """return [...document.querySelectorAll('#messages .msg.assistant')].map(e =>
        ({text: e.textContent, done: e.dataset.done || null, finish: e.dataset.finish || null}));""")


def user_texts(d):
    return js(d, "return [...document.querySelectorAll('#messages .msg.user')].map(e => e.textContent);")


def send(d, text, enter=False):
    box = d.find_element(By.ID, "input")
    box.clear()
    box.send_keys(text)
    if enter:
        box.send_keys(Keys.ENTER)
    else:
        d.find_element(By.ID, "send").click()


def wait_answer(d, n):
    """Wait until the n-th assistant message has ended; returns its state."""
    wait(d, lambda: len(assistant_states(d)) >= n and assistant_states(d)[n - 1]["done"] == "1",
         f"assistant message {n} to end", timeout=ANSWER_TIMEOUT)
    return assistant_states(d)[n - 1]


def last_body(d):
    return js(d, "return window.lastRequestBody ? JSON.stringify(window.lastRequestBody) : null;")


def buttons_idle(d):
    return (d.find_element(By.ID, "send").is_enabled(), d.find_element(By.ID, "stop").is_enabled())


def severe_logs(d):
    return [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]


def open_page(d, srv, name):
    d.get(srv.url + "/")
    wait(d, lambda: text_of(d, "model") == name, f"the header to show the model {name!r}")


@pytest.fixture
def page(server, driver, web_model):
    """A freshly loaded page (empty conversation) against the key-less server."""
    driver.get_log("browser")  # drop what earlier tests left
    open_page(driver, server, os.path.basename(web_model))
    yield driver
    errors = severe_logs(driver)
    assert not errors, f"JavaScript errors in the browser console: {errors}"


# ---- tests -----------------------------------------------------------------------------

def test_page_is_embeddable_and_self_contained():
    with open(PAGE, encoding="utf-8") as f:
        html = f.read()
    for delimiter in (')HTML"', ')llmctl_text"'):  # C++ raw-string ends it may be embedded with
        assert delimiter not in html, f"chat.html contains {delimiter!r}, which would end the raw string early"
    for external in ("http://", "https://", "//cdn", "@import"):
        assert external not in html, f"chat.html must work offline, found {external!r}"


def test_page_loads_with_the_model_name(page, server, web_model):
    name = os.path.basename(web_model)
    assert text_of(page, "model") == name
    assert "LLMCTL" in page.title.upper()
    for id_ in ("messages", "input", "send", "stop", "clear", "system", "temperature", "top_p",
                "max_tokens", "api_key", "status"):
        assert page.find_elements(By.ID, id_), f"#{id_} is missing"
    assert buttons_idle(page) == (True, False)
    # the sliders' defaults, each with its value shown
    assert js(page, "return ['temperature', 'top_p', 'max_tokens'].map(i => "
                    "document.querySelector('output[for=\"' + i + '\"]').textContent);") == ["0.7", "0.9", "256"]
    # GET / serves this very file, as HTML
    with urllib.request.urlopen(server.url + "/", timeout=10) as r:
        assert r.status == 200
        assert r.headers.get("Content-Type", "").startswith("text/html")
        served = r.read().decode("utf-8")
    with open(PAGE, encoding="utf-8") as f:
        assert served == f.read(), "GET / differs from src/serve/web/chat.html (rebuild the binary?)"


def test_streamed_answer_uses_the_sliders(page, web_model):
    set_slider(page, "temperature", 0)
    set_slider(page, "max_tokens", 16)
    send(page, "hello there")
    answer = wait_answer(page, 1)
    assert answer["text"], "empty answer"
    assert answer["finish"] in ("stop", "length"), answer
    assert user_texts(page) == ["hello there"]
    body = json.loads(last_body(page))
    assert body["model"] == os.path.basename(web_model)
    assert body["temperature"] == 0 and body["max_tokens"] == 16 and body["top_p"] == 0.9
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hello there"}]
    status = text_of(page, "status")
    assert "tokens" in status and "finish: " + answer["finish"] in status, status
    assert buttons_idle(page) == (True, False)


def test_history_is_kept_then_cleared(page):
    set_slider(page, "temperature", 0)
    set_slider(page, "max_tokens", 8)
    page.find_element(By.ID, "system").send_keys("be brief")
    system = {"role": "system", "content": "be brief"}

    send(page, "hello there", enter=True)  # Enter sends
    first = wait_answer(page, 1)
    assert first["finish"] in ("stop", "length"), first
    send(page, "how are you")
    second = wait_answer(page, 2)
    assert second["finish"] in ("stop", "length"), second
    assert json.loads(last_body(page))["messages"] == [
        system, {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": first["text"]}, {"role": "user", "content": "how are you"}]
    assert user_texts(page) == ["hello there", "how are you"]

    page.find_element(By.ID, "clear").click()
    assert js(page, "return document.querySelectorAll('#messages .msg').length;") == 0
    send(page, "start over")
    again = wait_answer(page, 1)
    assert again["finish"] in ("stop", "length"), again
    assert json.loads(last_body(page))["messages"] == [system, {"role": "user", "content": "start over"}]


# Waits for the newest assistant bubble's first text (at most 0.3 s), records whether the
# Send / Stop buttons are disabled, then clicks Stop.
STOP_WHEN_TEXT_SHOWS = """
    const done = arguments[arguments.length - 1], t0 = performance.now();
    const bubbles = document.querySelectorAll('#messages .msg.assistant');
    const bubble = bubbles[bubbles.length - 1];
    const timer = setInterval(() => {
        if (bubble.textContent === '' && performance.now() - t0 < 300) return;
        clearInterval(timer);
        const busy = {send: document.getElementById('send').disabled,
                      stop: document.getElementById('stop').disabled};
        document.getElementById('stop').click();
        done(busy);
    }, 5);"""


def test_stop_keeps_the_partial_answer(page):
    # Long enough to be still running at Stop (the nano model decodes ~1000 tokens/s); not
    # 2048: with the prompt that would exceed nano's 2048-token context, which is a 400.
    set_slider(page, "max_tokens", 1024)
    set_slider(page, "temperature", 1)
    # A random model may sample <|im_end|> before Stop is clicked (about one try in ten):
    # that answer ended by itself, so the conversation is cleared and asked again.
    for _ in range(5):
        send(page, "tell me a long story")
        # Click Stop from inside the page as soon as the first text shows (at most 0.3 s after
        # sending), so no WebDriver round trip lets the answer run to its end first.
        seen = page.execute_async_script(STOP_WHEN_TEXT_SHOWS)
        if seen == {"send": True, "stop": False}:
            break
        ended = wait_answer(page, 1)
        assert ended["finish"] in ("stop", "length"), (seen, ended)
        page.find_element(By.ID, "clear").click()
    assert seen == {"send": True, "stop": False}, f"while answering: #send must be disabled, #stop enabled: {seen}"
    stopped = wait_answer(page, 1)
    assert stopped["finish"] == "stopped", stopped
    time.sleep(0.3)  # nothing more arrives after Stop
    assert assistant_states(page)[0]["text"] == stopped["text"]
    assert "stopped" in text_of(page, "status")
    assert buttons_idle(page) == (True, False)

    # The page (and the server) take the next question; the partial answer is in its history.
    set_slider(page, "max_tokens", 8)
    set_slider(page, "temperature", 0)
    send(page, "and then?")
    after = wait_answer(page, 2)
    assert after["finish"] in ("stop", "length"), after
    assert json.loads(last_body(page))["messages"] == [
        {"role": "user", "content": "tell me a long story"},
        {"role": "assistant", "content": stopped["text"]}, {"role": "user", "content": "and then?"}]


def test_api_key(driver, key_server, web_model):
    name = os.path.basename(web_model)
    driver.get_log("browser")
    driver.get(key_server.url + "/")
    # Without the key /v1/models is refused: the page says so and names no model.
    wait(driver, lambda: js(driver, "return document.getElementById('status').classList.contains('error');"),
         "an error in #status without the API key")
    assert text_of(driver, "model") != name
    assert error_message(key_server.url + "/v1/models") in text_of(driver, "status")

    # Typing the key asks again; then a question gets an answer.
    driver.find_element(By.ID, "api_key").send_keys(API_KEY)
    wait(driver, lambda: text_of(driver, "model") == name, "the model name once the key is typed")
    set_slider(driver, "temperature", 0)
    set_slider(driver, "max_tokens", 8)
    send(driver, "hello there")
    ok = wait_answer(driver, 1)
    assert ok["text"] and ok["finish"] in ("stop", "length"), ok

    # A refused completion (wrong key, set without an 'input' event so the model list is not
    # asked again) shows the server's message in the bubble and #status; the page stays usable.
    js(driver, "document.getElementById('api_key').value = 'wrong-key';")
    send(driver, "refused")
    refused = wait_answer(driver, 2)
    assert refused["finish"] == "error", refused
    body = json.loads(last_body(driver))
    message = error_message(key_server.url + "/v1/chat/completions", "wrong-key", body)
    assert message in refused["text"] and message in text_of(driver, "status"), (message, refused)
    assert buttons_idle(driver) == (True, False)
    js(driver, "document.getElementById('api_key').value = arguments[0];", API_KEY)
    send(driver, "hello again")
    again = wait_answer(driver, 3)
    assert again["finish"] in ("stop", "length"), again
    # The failed turn is not part of the history.
    assert [m["content"] for m in json.loads(last_body(driver))["messages"] if m["role"] == "user"] == \
        ["hello there", "hello again"]
    # The only console errors are the refused requests (401).
    errors = [e for e in severe_logs(driver) if "401" not in e.get("message", "")]
    assert not errors, f"JavaScript errors in the browser console: {errors}"
