"""The page's file panel in real headless Chromium: the list follows the session (a cell's
files appear), drag and drop and the Upload button upload, Download saves the same bytes,
Delete removes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Gateway
from tests.test_files import files_url
from tests.test_page import Page, browser, poll  # noqa: F401  (browser: the fixture)

DROP = """
const [panel, name, bytes] = arguments;
const dt = new DataTransfer();
dt.items.add(new File([new Uint8Array(bytes)], name));
for (const type of ['dragenter', 'dragover', 'drop']) {
  panel.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
}
"""


def listed(page: Page) -> list[str]:
    return list(page.js("return [...document.querySelectorAll('#file-list .file')]"
                        ".map(li => li.dataset.path)"))


def click(page: Page, path: str, button: str) -> None:
    """Click ``button`` in the row of ``path``; the list may be drawn anew between finding
    the row and clicking it (a file event refreshes it), then find it again."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked() -> bool:
        try:
            page.find(f'#file-list .file[data-path="{path}"]').find_element(
                page.by.CSS_SELECTOR, button).click()
            return True
        except StaleElementReferenceException:
            return False

    poll(clicked, 10, f"a click on {button} of {path}")


def test_file_panel_lists_uploads_downloads_and_deletes(
        browser: Any, gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:  # noqa: F811
    gw = gateway_factory()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(downloads)})
    browser.get(f"{gw.url}/#token={gw.token}&session=files-page")
    page = Page(browser)
    poll(lambda: page.kernel_state() == "idle", 30, "an idle kernel")
    assert "No files" in page.find("#file-list").text

    # a cell's files show up (the result event refreshes the list)
    cell = page.run("import os\nos.makedirs('out', exist_ok=True)\n"
                    "open('out/made.txt', 'w').write('made by the kernel')")
    assert page.wait_done(cell) == "ok"
    poll(lambda: listed(page) == ["out/made.txt"], 10, "the kernel's file in the list")

    # drag and drop uploads (binary, byte for byte)
    data = list(range(256)) * 4
    page.js(DROP, page.find("#files"), "dropped.bin", data)
    poll(lambda: "dropped.bin" in listed(page), 10, "the dropped file")
    assert gw.http.get(files_url("files-page", "dropped.bin")).content == bytes(data)

    # the Upload button's file input
    picked = tmp_path / "picked.csv"
    picked.write_text("a,b\n1,2\n")
    page.find("#file-input").send_keys(str(picked))
    poll(lambda: "picked.csv" in listed(page), 10, "the picked file")
    assert page.find("#files-status").text.startswith("uploaded")

    # Download saves the file as the browser's download
    click(page, "out/made.txt", ".file-download")
    saved = downloads / "made.txt"
    poll(lambda: saved.exists() and saved.read_text() == "made by the kernel", 10,
         "the downloaded file")

    # Delete removes it from the workspace and the list
    click(page, "dropped.bin", ".file-delete")
    poll(lambda: "dropped.bin" not in listed(page), 10, "the deleted file to go")
    assert gw.http.get(files_url("files-page", "dropped.bin")).status_code == 404

    # a file uploaded elsewhere (REST) appears through the file_changed event
    gw.http.put(files_url("files-page", "from-rest.txt"), content=b"x")
    poll(lambda: "from-rest.txt" in listed(page), 10, "a file another client uploaded")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
