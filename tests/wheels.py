"""Small wheels built by hand for the package tests (offline, deterministic): pure Python, one
with a dependency, one with a native extension (a copy of an extension module of this
interpreter), a big one, and an sdist-only project whose build would leave a mark."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path


def make_wheel(dest: Path, name: str, version: str, files: dict[str, bytes], *,
               requires: list[str] | None = None, tag: str = "py3-none-any") -> Path:
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    metadata = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                + "".join(f"Requires-Dist: {r}\n" for r in requires or []))
    pure = "true" if tag.endswith("none-any") else "false"
    wheel_meta = f"Wheel-Version: 1.0\nGenerator: exec-gateway-tests\nRoot-Is-Purelib: {pure}\n" \
                 f"Tag: {tag}\n"
    entries = {**files, f"{info}/METADATA": metadata.encode(),
               f"{info}/WHEEL": wheel_meta.encode()}
    record = []
    for path, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = dest / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in entries.items():
            zf.writestr(zipfile.ZipInfo(member, (2020, 1, 1, 0, 0, 0)), data,
                        zipfile.ZIP_DEFLATED)
    return path


def make_sdist(dest: Path, name: str, version: str, marker: Path) -> Path:
    """An sdist whose build (setup.py) would create ``marker``: proof that none ran."""
    setup = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('built')\n"
             f"from setuptools import setup\nsetup(name={name!r}, version={version!r})\n")
    path = dest / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for member, data in {"setup.py": setup.encode(),
                             "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\n"
                                         f"Version: {version}\n".encode()}.items():
            info = tarfile.TarInfo(f"{name}-{version}/{member}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def native_extension() -> tuple[str, bytes] | None:
    """(file name, bytes) of a small self-contained extension module of this interpreter
    (markupsafe's ``_speedups``), to ship under another package: its init function goes by
    the module's base name, which the copy keeps."""
    try:
        import markupsafe._speedups as speedups
    except ImportError:
        return None
    path = Path(speedups.__file__ or "")
    return path.name, path.read_bytes()


def build_index(dest: Path, marker: Path) -> dict[str, Path]:
    """The test index: every wheel and the sdist the tests install from."""
    dest.mkdir(parents=True, exist_ok=True)
    made = {
        "egw-tiny": make_wheel(dest, "egw-tiny", "1.0.0", {
            "egw_tiny/__init__.py": b"__version__ = '1.0.0'\ndef hello():\n    return 'hi'\n"}),
        "egw-base": make_wheel(dest, "egw-base", "2.0", {
            "egw_base/__init__.py": b"VALUE = 42\n"}),
        "egw-base-old": make_wheel(dest, "egw-base", "1.0", {  # (a conflict with egw-app)
            "egw_base/__init__.py": b"VALUE = 1\n"}),
        "egw-app": make_wheel(dest, "egw-app", "0.3", {
            "egw_app/__init__.py": b"from egw_base import VALUE\nANSWER = VALUE\n"},
            requires=["egw-base>=2"]),
        # 96 MiB of zeros: a small wheel that does not fit in a small workspace unpacked
        "egw-big": make_wheel(dest, "egw-big", "1.0", {
            "egw_big/__init__.py": b"", "egw_big/blob.bin": bytes(96 * 1024 * 1024)}),
        "egw-sdistonly": make_sdist(dest, "egw-sdistonly", "1.0", marker),
    }
    native = native_extension()
    if native is not None:
        so_name, data = native
        made["egw-native"] = make_wheel(dest, "egw-native", "1.0", {
            "egw_native/__init__.py": b"from egw_native import _speedups\n",
            f"egw_native/{so_name}": data}, tag="cp311-cp311-manylinux_2_17_x86_64")
    return made
