"""The kernel's side of package installs: ``%pip`` and ``!pip`` in a cell, and the session's
``.packages`` directory on ``sys.path``.

The sandbox has no network and no pip: ``pip install`` asks the gateway, which downloads
wheels outside the sandbox and installs them into ``<workspace>/.packages`` with the kernel's
own user (see gateway/packages/). The question goes over the stdin channel the kernel already
has (the shell channel is busy with the cell): an ``input_request`` whose prompt starts with
``PROMPT``, answered by the gateway in JSON. The kernel then asks for the job's status until
it ends, printing the new log lines as the cell's output. ``pip list`` and ``pip uninstall``
work here on ``.packages`` alone; any other pip command gets a message saying what works.

Stand-alone on purpose (no gateway imports): the Docker kernel image ships this file next to
kernel_boot.py, which calls ``register()`` once the kernel is up.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import os
import shlex
import shutil
import sys
from typing import Any

PROMPT = "\x00exec-gateway:pip\x00"  # what the gateway recognises (never shown to a client)
PACKAGES = ".packages"  # at the workspace root
USAGE = ("in this sandbox pip can only `install` (packages come through the gateway: the "
         "sandbox has no network), `uninstall` and `list` (the session's .packages)")
_QUIET = {"-q", "--quiet", "-U", "--upgrade", "--no-input", "--disable-pip-version-check",
          "--no-cache-dir", "--progress-bar=off"}
_state: dict[str, Any] = {"entry": None}


def packages_dir() -> str:
    return str(_state["entry"] or os.path.join(os.getcwd(), PACKAGES))


def add_to_path(workspace: str) -> None:
    """Put ``<workspace>/.packages`` on ``sys.path`` (last: the image's own libraries win),
    replacing the entry of an earlier workspace (a pooled kernel moved into a session's)."""
    entry = os.path.join(workspace, PACKAGES)
    old = _state["entry"]
    if old is not None and old in sys.path:
        sys.path.remove(old)
    _state["entry"] = entry
    sys.path.append(entry)
    importlib.invalidate_caches()


class _LateDirectory(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: ``.packages`` may appear after an import already missed it
    (Python then caches "no such directory"); on a miss, look there once more."""

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        entry = _state["entry"]
        if path is not None or entry is None or not os.path.isdir(entry):
            return None
        if sys.path_importer_cache.get(entry, 0) is None:
            del sys.path_importer_cache[entry]
        return importlib.machinery.PathFinder.find_spec(fullname, [entry])


# ------------------------------------------------------------------ asking the gateway
def ask(request: dict[str, Any]) -> dict[str, Any]:
    """One question to the gateway over the stdin channel; its JSON answer."""
    kernel = _kernel()
    allowed = kernel._allow_stdin
    kernel._allow_stdin = True  # a REST cell runs without stdin; this request is the gateway's
    try:
        raw = kernel.raw_input(PROMPT + json.dumps(request))
    finally:
        kernel._allow_stdin = allowed
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return {"error": "the gateway did not answer the package request (is this kernel "
                         "served by exec-gateway?)"}
    return answer


def _kernel() -> Any:
    from ipykernel.kernelbase import Kernel

    return Kernel.instance()


def install(args: list[str]) -> None:
    """``pip install ARGS`` through the gateway, its log printed as it comes."""
    quiet = any(a in ("-q", "--quiet") for a in args)
    packages = [a for a in args if a not in _QUIET]
    if not packages:
        print("pip install: name at least one package", file=sys.stderr)
        return
    answer = ask({"op": "install", "packages": packages})
    if "job_id" not in answer:
        print(f"pip install: {answer.get('error', 'refused')}", file=sys.stderr)
        return
    since = 0
    while True:
        status = ask({"op": "status", "job_id": answer["job_id"], "since": since})
        if "status" not in status:
            print(f"pip install: {status.get('error', 'no answer')}", file=sys.stderr)
            return
        for line in status.get("lines", []):
            if not quiet:
                print(line, flush=True)
        since = status.get("next", since)
        if status["status"] in ("succeeded", "failed"):
            break
    importlib.invalidate_caches()
    if status["status"] == "succeeded":
        if quiet:  # (pip's own log says it otherwise)
            installed = " ".join(f"{p['name']}-{p['version']}" for p in status["installed"])
            print(f"Successfully installed {installed}", flush=True)
    else:
        print(f"pip install failed: {status.get('error') or 'see the log above'}",
              file=sys.stderr, flush=True)


# ------------------------------------------------------------------ list / uninstall, here
def _distributions() -> list[Any]:
    from importlib.metadata import distributions

    seen: dict[str, Any] = {}
    for dist in distributions(path=[packages_dir()]):
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = dist
    return sorted(seen.values(), key=lambda d: d.metadata["Name"].lower())


def list_packages() -> None:
    dists = _distributions()
    if not dists:
        print("no packages installed in this session")
        return
    width = max(len(d.metadata["Name"]) for d in dists)
    print(f"{'Package':<{width}} Version")
    for dist in dists:
        print(f"{dist.metadata['Name']:<{width}} {dist.version}")


def uninstall(args: list[str]) -> None:
    names = [a for a in args if not a.startswith("-")]
    if not names:
        print("pip uninstall: name at least one package", file=sys.stderr)
        return
    root = os.path.realpath(packages_dir())
    by_name = {_canonical(d.metadata["Name"]): d for d in _distributions()}
    for name in names:
        dist = by_name.get(_canonical(name))
        if dist is None:
            print(f"WARNING: Skipping {name} as it is not installed in this session.")
            continue
        label = f"{dist.metadata['Name']}-{dist.version}"  # (read before its files go)
        _remove(dist, root)
        print(f"Successfully uninstalled {label}")
    importlib.invalidate_caches()


def _canonical(name: str) -> str:
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


def _remove(dist: Any, root: str) -> None:
    """Remove a distribution's files (its RECORD) and the directories they leave empty, never
    outside ``root``."""
    dirs: set[str] = set()
    for entry in dist.files or []:
        path = os.path.realpath(os.path.join(root, str(entry)))
        if not path.startswith(root + os.sep):
            continue
        dirs.add(os.path.dirname(path))
        if os.path.isfile(path) or os.path.islink(path):
            os.unlink(path)
    info = getattr(dist, "_path", None)
    if info is not None and str(info).startswith(root + os.sep):
        shutil.rmtree(info, ignore_errors=True)
    for path in sorted(dirs, key=len, reverse=True):
        while path.startswith(root + os.sep):
            pycache = os.path.join(path, "__pycache__")
            if os.path.isdir(pycache) and not any(
                    not n.endswith(".pyc") for n in os.listdir(pycache)):
                shutil.rmtree(pycache, ignore_errors=True)
            try:
                os.rmdir(path)
            except OSError:
                break
            path = os.path.dirname(path)


# ------------------------------------------------------------------ %pip and !pip
def pip(line: str) -> None:
    """The ``%pip`` magic and the ``!pip`` shim: ``line`` is what follows ``pip``."""
    try:
        args = shlex.split(line)
    except ValueError as exc:
        print(f"pip: {exc}", file=sys.stderr)
        return
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "install":
        install(rest)
    elif command == "uninstall":
        uninstall(rest)
    elif command in ("list", "freeze"):
        list_packages()
    else:
        print(f"pip {command}: {USAGE}", file=sys.stderr)


def _pip_command(cmd: str) -> str | None:
    """What follows ``pip`` when a shell command ``cmd`` runs pip; None otherwise."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    if words and os.path.basename(words[0]) in ("pip", "pip3", f"pip{sys.version_info[0]}."
                                                 f"{sys.version_info[1]}"):
        return shlex.join(words[1:])
    if len(words) >= 3 and os.path.basename(words[0]).startswith("python") \
            and words[1:3] == ["-m", "pip"]:
        return shlex.join(words[3:])
    return None


def register(shell: Any) -> None:
    """Install the ``%pip`` magic, the ``!pip`` shim and ``.packages`` on ``sys.path``."""
    add_to_path(os.getcwd())
    sys.meta_path.append(_LateDirectory())
    shell.register_magic_function(pip, "line", "pip")
    system = shell.system

    def system_with_pip(cmd: str) -> Any:
        if _pip_command(cmd) is None:
            return system(cmd)
        rest = _pip_command(shell.var_expand(cmd, depth=1))  # !pip install {name}, as IPython
        pip(rest or "")
        return None

    shell.system = system_with_pip
