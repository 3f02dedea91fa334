"""Render a full report in headless Chromium: no console errors, every image decoded, a screenshot taken.

Talks to Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages separated by NUL bytes, the browser reads fd 3 and writes fd 4),
so no port, no network and no extra package. Skips, saying why, only when no
Chromium binary is installed (.ci/run installs Debian's `chromium` where it can).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fake_runs import HOSTILE, make_run
from reports import render_report

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                             shutil.which("chromium-browser"), shutil.which("google-chrome"))
                 if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                                "(apt-get install chromium, or set CHROMIUM=/path/to/chrome)")


class DevTools:
    """A minimal DevTools-protocol client over the pipe of a headless Chromium."""

    def __init__(self, binary: str, profile: Path):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire():  # in the child: the browser reads commands on fd 3 and writes replies on fd 4
            # Copy above 10 first, so neither dup2 clobbers the other pipe, and the copies drop close-on-exec.
            high_r, high_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w))
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions", "--no-first-run",
             "--no-default-browser-check", "--hide-scrollbars", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session = None

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == event:
                return self.events.pop(i)
        while True:
            message = self._read(deadline)
            if message.get("method") == event:
                return message
            self.events.append(message)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


def open_page(browser: DevTools, url: str, width: int = 1280) -> None:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    browser.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        browser.send(f"{domain}.enable")
    browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                        "mobile": False})
    browser.send("Page.navigate", {"url": url})
    browser.wait_for("Page.loadEventFired")


def console_errors(browser: DevTools) -> list[str]:
    errors = []
    for e in browser.events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(json.dumps(params.get("args"))[:300])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(params["entry"].get("text", "")[:300])
    return errors


def evaluate(browser: DevTools, expression: str):
    result = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True})
    if "exceptionDetails" in result:
        raise AssertionError(f"page script failed: {result['exceptionDetails']}")
    return result["result"].get("value")


def screenshot(browser: DevTools, path: Path, width: int = 1280) -> None:
    height = int(evaluate(browser, "document.documentElement.scrollHeight"))
    browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": min(height, 16000),
                                                        "deviceScaleFactor": 1, "mobile": False})
    data = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
    path.write_bytes(base64.b64decode(data))


@pytest.fixture
def browser(tmp_path):
    client = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        yield client
    finally:
        client.close()


def test_report_renders_in_chromium(tmp_path, browser):
    run = make_run(tmp_path / "run", class_names=(HOSTILE, "b", "c"), feature_names=[HOSTILE, "x", "y", "z"])
    report = render_report(run)
    open_page(browser, report.resolve().as_uri())
    images = evaluate(browser, """Promise.all(Array.from(document.images).map(img =>
        img.decode().then(() => [img.alt, img.naturalWidth], () => [img.alt, 0])))""")
    assert len(images) == 6
    assert all(width > 0 for _, width in images), images
    assert evaluate(browser, "document.querySelectorAll('script').length") == 0
    assert HOSTILE in evaluate(browser, "document.body.innerText"), "hostile names show as text"
    toc = evaluate(browser, "Array.from(document.querySelectorAll('nav.toc a')).map(a => a.textContent)")
    assert toc == ["Overview", "Training", "Compression", "Explanation", "Model card"]
    overflow = evaluate(browser, "document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "the page fits a 1280-pixel laptop screen without scrolling sideways"
    shot = Path(os.environ.get("REPORT_SCREENSHOT", tmp_path / "report.png"))
    screenshot(browser, shot)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
    assert console_errors(browser) == []


def test_print_layout_has_no_errors(tmp_path, browser):
    report = render_report(make_run(tmp_path / "run"))
    open_page(browser, report.resolve().as_uri())
    browser.send("Emulation.setEmulatedMedia", {"media": "print"})
    pdf = browser.send("Page.printToPDF", {"printBackground": False})["data"]
    assert base64.b64decode(pdf).startswith(b"%PDF")
    assert console_errors(browser) == []
