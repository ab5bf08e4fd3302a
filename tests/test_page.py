"""The web IDE page at / in real headless Chromium (selenium + Debian's chromium-driver):
live output, images, safe HTML, input(), interrupt and restart, under the page's CSP."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import Gateway, unavailable

SCREENSHOT_COPY = Path("/tmp/exec-gateway-page.png")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1360,900"]


def _missing(why: str) -> NoReturn:
    unavailable(why + "; run `bash scripts/install-browser.sh` (and `pip install selenium`)")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by chromedriver; browser console entries are kept."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        _missing("chromium or chromedriver is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def poll(what: Callable[[], Any], timeout_s: float = 30.0, desc: str = "") -> Any:
    """Poll a browser-side condition with a deadline (each poll is a round trip)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {desc or what}")
        time.sleep(0.05)


class Page:
    """The IDE page as a user sees it: editor, buttons, cells."""

    def __init__(self, driver: Any) -> None:
        from selenium.webdriver.common.by import By

        self.d = driver
        self.by = By

    def js(self, script: str, *args: Any) -> Any:
        return self.d.execute_script(script, *args)

    def find(self, css: str) -> Any:
        return self.d.find_element(self.by.CSS_SELECTOR, css)

    def kernel_state(self) -> str:
        return str(self.find("#kernel").get_attribute("data-state"))

    def cell_count(self) -> int:
        return int(self.js("return document.querySelectorAll('.cell').length"))

    def run(self, code: str, *, shortcut: bool = False) -> Any:
        """Type ``code`` into the editor and run it; returns the new cell element."""
        from selenium.webdriver.common.keys import Keys

        before = self.cell_count()
        editor = self.find("#code")
        self.js("arguments[0].value = arguments[1]", editor, code)
        if shortcut:
            editor.send_keys(Keys.CONTROL, Keys.ENTER)
        else:
            self.find("#run").click()
        poll(lambda: self.cell_count() > before, 10, "a new cell")
        return self.d.find_elements(self.by.CSS_SELECTOR, ".cell")[-1]

    def out_text(self, cell: Any) -> str:
        return str(self.js("return arguments[0].querySelector('.cell-out').textContent", cell))

    def wait_done(self, cell: Any, timeout_s: float = 60) -> str:
        poll(lambda: cell.get_attribute("data-status"), timeout_s, "the cell's result")
        return str(cell.get_attribute("data-status"))

    def running(self, cell: Any) -> bool:
        return "running" in str(cell.get_attribute("class"))


def test_ide_page_runs_code_live_in_a_real_browser(
    browser: Any, gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    gw = gateway_factory(interrupt_grace_s=1)
    sid = "page-test"
    browser.get(f"{gw.url}/#token={gw.token}&session={sid}")
    page = Page(browser)
    assert "token=" not in browser.current_url, "the token must leave the address bar"
    poll(lambda: page.kernel_state() == "idle", 30, "an idle kernel")
    assert page.find("#conn").get_attribute("data-conn") == "online"

    # the editor indents with Tab
    editor = page.find("#code")
    page.js("arguments[0].value = ''", editor)
    editor.send_keys("if True:\t")
    assert page.js("return arguments[0].value", editor) == "if True:    "

    # Ctrl-Enter runs; lines show up while the cell is still running
    cell = page.run("import time\nfor i in range(6):\n    print(f'line {i}', flush=True)\n"
                    "    time.sleep(0.4)\nx = 42", shortcut=True)
    poll(lambda: "line 0" in page.out_text(cell), 10, "the first line")
    assert page.running(cell) and "line 5" not in page.out_text(cell), \
        "the first line must be shown before the cell finishes"
    assert page.kernel_state() == "busy"
    assert page.wait_done(cell) == "ok"
    assert page.out_text(cell) == "".join(f"line {i}\n" for i in range(6))
    poll(lambda: page.kernel_state() == "idle", 10, "idle after the run")
    assert page.find("#exec-count").text == "[1]"

    # stderr is shown apart from stdout; a traceback is readable (no ANSI codes)
    cell = page.run("import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n1/0")
    assert page.wait_done(cell) == "error"
    assert cell.find_element(page.by.CSS_SELECTOR, "pre.stderr").text == "to err"
    assert cell.find_element(page.by.CSS_SELECTOR, "pre.stdout").text == "to out"
    tb = cell.find_element(page.by.CSS_SELECTOR, ".traceback").text
    assert "ZeroDivisionError: division by zero" in tb and "\x1b[" not in tb

    # a matplotlib figure arrives as an <img> that decodes
    cell = page.run("import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(5, 2.6))\n"
                    "ax.plot([0, 1, 4, 9, 16, 25], marker='o')\nax.set_title('squares')\n"
                    "plt.show()")
    assert page.wait_done(cell) == "ok"
    plot_cell = cell
    img = poll(lambda: cell.find_elements(page.by.CSS_SELECTOR, "img.rich"), 10, "the plot")[0]
    assert str(img.get_attribute("src")).startswith("data:image/png;base64,")
    poll(lambda: page.js("return arguments[0].complete && arguments[0].naturalWidth", img) > 0,
         10, "the plot to decode")

    # SVG as an <img>, HTML in a sandboxed frame that cannot run its script
    cell = page.run(
        "from IPython.display import HTML, SVG, display\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"120\" height=\"24\">"
        "<rect width=\"120\" height=\"24\" fill=\"#2f6fde\"/></svg>'))\n"
        "display(HTML('<b>bold</b> <i>table</i><script>parent.document.title=\"pwned\"</script>'))")
    assert page.wait_done(cell) == "ok"
    svg = cell.find_element(page.by.CSS_SELECTOR, "img.svg")
    assert str(svg.get_attribute("src")).startswith("data:image/svg+xml")
    poll(lambda: page.js("return arguments[0].naturalWidth", svg) == 120, 10, "the SVG")
    assert not cell.find_elements(page.by.CSS_SELECTOR, ".cell-out svg"), "never inline SVG"
    frame = cell.find_element(page.by.CSS_SELECTOR, "iframe.html-out")
    assert "allow-scripts" not in str(frame.get_attribute("sandbox"))
    browser.switch_to.frame(frame)
    assert "bold" in browser.find_element(page.by.TAG_NAME, "body").text
    browser.switch_to.default_content()
    assert browser.title == "exec-gateway"

    # input() is answered through the page's input box; getpass gets a password box
    cell = page.run("name = input('Your name? ')\nprint('hello', name)\n"
                    "import getpass\nsecret = getpass.getpass('Password: ')\n"
                    "print('secret has', len(secret), 'chars')")
    box = poll(lambda: cell.find_elements(page.by.CSS_SELECTOR, ".stdin-form input"), 20,
               "the input box")[0]
    assert box.get_attribute("type") == "text"
    assert "Your name?" in cell.find_element(page.by.CSS_SELECTOR, ".stdin-form").text
    box.send_keys("Ada\n")
    poll(lambda: "hello Ada" in page.out_text(cell), 10, "the answer to be used")
    box = poll(lambda: cell.find_elements(page.by.CSS_SELECTOR, ".stdin-form input"), 20,
               "the password box")[0]
    assert box.get_attribute("type") == "password"
    box.send_keys("hunter2\n")
    assert page.wait_done(cell) == "ok"
    assert "secret has 7 chars" in page.out_text(cell)
    assert "hunter2" not in page.out_text(cell)

    # Interrupt stops a running loop; the session keeps its variables
    cell = page.run("import time\nfor i in range(600):\n    print('tick', i, flush=True)\n"
                    "    time.sleep(0.05)")
    poll(lambda: "tick 3" in page.out_text(cell), 10, "the loop to run")
    page.find("#interrupt").click()
    assert page.wait_done(cell, 20) == "interrupted"
    assert "KeyboardInterrupt" in cell.find_element(page.by.CSS_SELECTOR, ".traceback").text
    cell = page.run("print(x)")
    assert page.wait_done(cell) == "ok" and page.out_text(cell) == "42\n"

    screenshot = tmp_path / "exec-gateway-page.png"
    page.js("arguments[0].scrollIntoView()", plot_cell)
    assert browser.save_screenshot(str(screenshot))
    shutil.copyfile(screenshot, SCREENSHOT_COPY)

    # Restart: a fresh interpreter, the next generation
    generation = int(page.find("#generation").text.split()[-1])
    page.find("#restart").click()
    poll(lambda: page.find("#generation").text == f"gen {generation + 1}", 30, "a new generation")
    poll(lambda: page.kernel_state() == "idle", 30, "idle after restart")
    cell = page.run("print('x' in globals())")
    assert page.wait_done(cell) == "ok" and page.out_text(cell) == "False\n"

    # the page ran under its CSP without a console error (but the one that says the cell's
    # <script> was blocked)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and "Blocked script execution in 'about:srcdoc'" not in e["message"]]
    assert not errors, errors


class CuttableProxy:
    """A TCP proxy in front of the gateway whose connections the test can cut, as a flaky
    network would; while cut, it refuses new connections too."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.cut_off = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        self.cut_off.set()
        with self.lock:
            live = list(self.sockets)
        for s in live:
            self._drop(s)

    def restore(self) -> None:
        self.cut_off.clear()

    def close(self) -> None:
        self.server.close()
        self.cut()


def test_ide_page_reconnects_after_a_drop_and_shows_what_it_missed(
    browser: Any, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(ws_replay_events=20)
    proxy = CuttableProxy(int(gw.url.rsplit(":", 1)[1]))
    try:
        browser.get(f"http://127.0.0.1:{proxy.port}/#token={gw.token}&session=flaky")
        page = Page(browser)
        poll(lambda: page.kernel_state() == "idle", 30, "an idle kernel")
        cell = page.run("print('before the drop')")
        assert page.wait_done(cell) == "ok"

        def conn() -> str:
            return str(page.find("#conn").get_attribute("data-conn"))

        def notices() -> list[str]:
            return list(page.js("return [...document.querySelectorAll('.notice')]"
                                ".map(n => n.textContent)"))

        # a short drop: a REST run meanwhile is replayed whole, without a gap
        proxy.cut()
        poll(lambda: conn() == "reconnecting", 10, "the page to notice the drop")
        gw.execute("flaky", "print('while away')")
        proxy.restore()
        poll(lambda: conn() == "online", 30, "the page to reconnect")
        away = poll(lambda: [c for c in browser.find_elements(page.by.CSS_SELECTOR, ".cell")
                             if "while away" in page.out_text(c)], 10, "the missed run")[0]
        assert away.get_attribute("data-status") == "ok"
        assert "REST" in away.text
        assert not [n for n in notices() if "no longer kept" in n]

        # a long one: more events than the gateway keeps; the page says part is missing
        proxy.cut()
        poll(lambda: conn() == "reconnecting", 10, "the page to notice the drop")
        gw.execute("flaky", "for i in range(40): print(i, flush=True)")
        proxy.restore()
        poll(lambda: conn() == "online", 30, "the page to reconnect")
        poll(lambda: [n for n in notices() if "no longer kept" in n], 10, "a gap notice")
        last = poll(lambda: [c for c in browser.find_elements(page.by.CSS_SELECTOR, ".cell")
                             if page.out_text(c).endswith("38\n39\n")], 10, "the run's end")[0]
        assert last.get_attribute("data-status") == "ok"
        assert not page.out_text(last).startswith("0\n"), "its start was trimmed from the log"

        # code over the gateway's message limit: the cell says so, the page reconnects
        cell = page.run("#" + "x" * 2_100_000)
        assert page.wait_done(cell) == "refused"
        assert "larger than the gateway accepts" in cell.text
        poll(lambda: conn() == "online", 30, "the page to reconnect")

        # and the page works as before
        cell = page.run("print('after')")
        assert page.wait_done(cell) == "ok" and page.out_text(cell) == "after\n"
    finally:
        proxy.close()
