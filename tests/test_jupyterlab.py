"""JupyterLab (from PyPI) through a real ``jupyter lab --gateway-url`` in front of the gateway,
driven in real headless Chromium: restarting the kernel from the UI is an ordinary restart, not
"The kernel appears to have died" (JupyterLab reads an iopub ``status: restarting`` as the
server auto-restarting a crashed kernel; a requested restart must announce ``starting``)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.conftest import Gateway, free_port, unavailable, wait_until
from tests.test_page import CHROMIUM_FLAGS, poll

NOTEBOOK = "restart.ipynb"
CELLS = ["x = 1\nx", "'x' in dir()"]


def _missing(why: str) -> NoReturn:
    unavailable(why + "; run `bash scripts/install-browser.sh` and `pip install -e .[test]` "
                "(jupyterlab)")


@dataclass
class Lab:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_notebook(path: Path, sources: list[str]) -> None:
    """A small nbformat 4 notebook bound to the ``python3`` kernelspec (so JupyterLab starts
    its kernel without asking which one)."""
    cells: list[dict[str, Any]] = [
        {"cell_type": "code", "execution_count": None, "id": f"cell-{i}", "metadata": {},
         "outputs": [], "source": source} for i, source in enumerate(sources)]
    path.write_text(json.dumps({
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))


def start_lab(gw: Gateway, tmp: Path) -> Lab:
    """``python -m jupyterlab`` on a free loopback port, its gateway client pointed at ``gw``
    with the gateway's token (from the environment, out of ``ps``); its own token, dirs and
    HOME under ``tmp`` (nothing read from or written to this machine's Jupyter setup)."""
    dirs = {name: tmp / name for name in ("root", "runtime", "config", "data", "home", "tmp",
                                          "settings", "workspaces")}
    for path in dirs.values():
        path.mkdir(parents=True)
    write_notebook(dirs["root"] / NOTEBOOK, CELLS)
    # no "get Jupyter news?" toast over the notebook, and nothing fetched from the internet
    settings = dirs["settings"] / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), secrets.token_urlsafe(24)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(dirs["home"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_NO_CONFIG": "1",  # ignore system and sys.prefix config
        "TMPDIR": str(dirs["tmp"]),  # where JUPYTER_NO_CONFIG makes its empty config dir
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "JUPYTER_GATEWAY_AUTH_TOKEN": gw.token,
    }
    log_path = tmp / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser",
             f"--gateway-url={gw.url}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             "--ServerApp.port_retries=0", f"--ServerApp.root_dir={dirs['root']}",
             f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
             "--GatewayClient.request_timeout=60", "--GatewayClient.connect_timeout=10",
             "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements."
             "NeverCheckForUpdate",
             *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI containers run as root
            env=env, cwd=dirs["root"], stdout=log, stderr=subprocess.STDOUT)
    lab = Lab(f"http://127.0.0.1:{port}", token, proc, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited early:\n{lab.log()}")
        try:
            return httpx.get(f"{lab.url}/lab/api/settings", timeout=2,
                             headers={"Authorization": f"token {token}"}).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 90, 0.1)
    except BaseException:
        stop(proc)
        raise
    return lab


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def lab(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> Iterator[Lab]:
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _missing("jupyterlab is not installed")
    gw = gateway_factory()
    server = start_lab(gw, tmp_path / "lab")
    try:
        yield server
    finally:
        stop(server.proc)


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Headless Chromium driven by chromedriver, as in test_page.py."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("chromium or chromedriver is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Notebook:
    """The notebook as a JupyterLab user sees it: cells, outputs, kernel status, dialogs."""

    def __init__(self, driver: Any) -> None:
        from selenium.webdriver.common.by import By

        self.d = driver
        self.by = By

    def js(self, script: str, *args: Any) -> Any:
        return self.d.execute_script(script, *args)

    def kernel_status(self) -> str:
        """The toolbar's execution indicator (``idle``, ``busy``, ``restarting``, ...), or
        ``no kernel`` while the toolbar names none (the indicator says ``idle`` then too)."""
        return str(self.js(
            "const p = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');"
            "const i = p && p.querySelector('.jp-Notebook-ExecutionIndicator');"
            "const n = p && p.querySelector('.jp-Toolbar-kernelName');"
            "if (!i || !n) return '';"
            "return ['', 'No Kernel'].includes(n.innerText.trim()) ? 'no kernel'"
            " : i.dataset.status"))

    def dialogs(self) -> list[str]:
        """The text of every JupyterLab dialog on screen."""
        return list(self.js(
            "return [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText)"))

    def cells(self) -> list[Any]:
        return list(self.d.find_elements(self.by.CSS_SELECTOR,
                                         ".jp-NotebookPanel .jp-Notebook .jp-CodeCell"))

    def output(self, index: int) -> str:
        return str(self.js(
            "const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell')"
            "[arguments[0]]; const o = c && c.querySelector('.jp-OutputArea-output');"
            "return o ? o.innerText.trim() : ''", index))

    def prompt(self, index: int) -> str:
        return str(self.js(
            "const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell')"
            "[arguments[0]]; const p = c && c.querySelector('.jp-InputPrompt');"
            "return p ? p.innerText.trim() : ''", index))

    def run_cell(self, index: int) -> None:
        """Select the cell by its prompt, then Run → Run Selected Cell and Do not Advance (a
        menu click does not depend on where the keyboard focus is)."""
        cell = self.cells()[index]
        cell.find_element(self.by.CSS_SELECTOR, ".jp-InputPrompt").click()
        poll(lambda: "jp-mod-active" in str(cell.get_attribute("class")), 10,
             f"cell {index} to be active")
        self.menu("Run", "notebook:run-cell")

    def menu(self, menu: str, command: str) -> None:
        """Open a main-menu menu by its label and click the item bound to ``command``."""
        labels = self.d.find_elements(self.by.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
        [label] = [e for e in labels if e.text.strip() == menu]
        label.click()
        item = poll(lambda: self.d.find_elements(
            self.by.CSS_SELECTOR, f".lm-Menu-item[data-command='{command}']"), 10,
            f"the {menu} menu's {command} item")[0]
        item.click()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_restart_from_jupyterlab_is_not_a_kernel_death(
    lab: Lab, chromium: Any, tmp_path: Path
) -> None:
    nb = Notebook(chromium)
    try:
        # the token in the query sets jupyter_server's login cookie
        chromium.get(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}")
        poll(lambda: len(nb.cells()) == len(CELLS), 90, "the notebook's cells")
        poll(lambda: nb.kernel_status() == "idle", 90, "an idle kernel")

        nb.run_cell(0)
        poll(lambda: nb.output(0) == "1", 60, "`x = 1; x` to print 1")
        nb.run_cell(1)
        poll(lambda: nb.output(1) == "True", 60, "`'x' in dir()` to print True")
        poll(lambda: nb.kernel_status() == "idle", 30, "idle after the runs")
        assert not nb.dialogs(), nb.dialogs()

        # Kernel → Restart Kernel…, and confirm
        nb.menu("Kernel", "kernelmenu:restart")
        confirm = poll(lambda: chromium.find_elements(
            nb.by.CSS_SELECTOR, ".jp-Dialog .jp-Dialog-button.jp-mod-accept"), 10,
            "the restart confirmation")[0]
        assert "Restart" in confirm.text, nb.dialogs()
        [asked] = nb.dialogs()

        def confirm_open() -> bool:
            return asked in nb.dialogs()

        confirm.click()
        poll(lambda: not confirm_open(), 10, "the confirmation to close")

        # JupyterLab pops "Kernel Restarting: ... appears to have died" as soon as it reads an
        # iopub `restarting`: watch every dialog for a few seconds and till the kernel is idle
        seen: list[str] = []  # every dialog after the confirmation, in order
        statuses: list[str] = []
        deadline = time.monotonic() + 5
        idle_deadline = time.monotonic() + 60
        while True:
            seen += [text for text in nb.dialogs() if text not in seen]
            status = nb.kernel_status()
            if not statuses or statuses[-1] != status:
                statuses.append(status)
            now = time.monotonic()
            if now > deadline and (status == "idle" or now > idle_deadline):
                break
            time.sleep(0.05)
        assert not seen, f"a dialog showed up on a requested restart: {seen} ({statuses})"
        assert "autorestarting" not in statuses, statuses
        assert statuses[-1] == "idle", f"the kernel is not idle after the restart: {statuses}"

        # a fresh interpreter, which runs fine
        nb.run_cell(1)
        poll(lambda: nb.prompt(1) not in ("[2]:", "[*]:") and nb.output(1), 60,
             "`'x' in dir()` to run again")
        assert (nb.prompt(1), nb.output(1)) == ("[1]:", "False"), \
            "the cell after the restart did not run in a fresh interpreter"
        poll(lambda: nb.kernel_status() == "idle", 30, "idle after the run")
        assert not nb.dialogs(), nb.dialogs()
    except BaseException:
        diagnose(chromium, nb, lab, tmp_path / "jupyterlab.png")
        raise


def diagnose(driver: Any, nb: Notebook, lab: Lab, shot: Path) -> None:
    """Print what a failure needs (screenshot path, status, dialogs, browser console and the
    jupyter lab log); never raises over the test's own error."""
    try:
        driver.save_screenshot(str(shot))
        console = "\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser"))
        print(f"screenshot: {shot}\nkernel status: {nb.kernel_status()!r}, "
              f"dialogs: {nb.dialogs()!r}\n--- browser console ---\n{console[-6000:]}")
    except Exception as exc:
        print(f"no browser diagnostics: {exc!r}")
    print(f"--- jupyter lab log ---\n{lab.log()[-6000:]}")
