"""Runs INSIDE a session's kernel (its source is sent as a silent cell): save the user
namespace to ``<workspace>/.egw-snapshot`` before hibernation, load it back after a restore.

Stand-alone on purpose: no gateway import, nothing left in the user namespace. Each global
is pickled on its own with cloudpickle (functions, lambdas and classes defined in the session
by value; modules by name); what cannot be pickled is skipped with the reason. Pickles are
only ever loaded here, in the session's own sandbox. Both verbs return a JSON report.
"""

import json
import os
import pickle
import shutil
from typing import Any

NAMESPACE = "namespace.pkl"
MANIFEST = "manifest.json"
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}
_MAX_NAMES = 2000  # names reported at most (a hostile namespace must not flood the gateway)


def _user_names(shell: Any) -> list[str]:
    hidden = shell.user_ns_hidden
    return [name for name in list(shell.user_ns)
            if not name.startswith("_") and name not in hidden and name not in _IPYTHON_NAMES]


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def save(shell: Any, directory: str, budget: int) -> str:
    """Pickle every user global that can be, largest dropped first while over ``budget``
    bytes; write them and the skipped list under ``directory``."""
    import cloudpickle

    blobs: dict[str, bytes] = {}
    skipped: list[dict[str, str]] = []
    for name in _user_names(shell):
        try:
            blobs[name] = cloudpickle.dumps(shell.user_ns[name], protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # anything a value's __reduce__ raises
            skipped.append({"name": name, "reason": "cannot be serialised: " + _reason(exc)})
    total = sum(len(b) for b in blobs.values())
    for name in sorted(blobs, key=lambda n: len(blobs[n]), reverse=True):
        if total <= budget:
            break
        total -= len(blobs.pop(name))
        skipped.append({"name": name, "reason": "dropped: the snapshot would be over "
                                                "snapshot_max_mb"})
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    try:
        with open(os.path.join(directory, NAMESPACE), "wb") as fh:
            pickle.dump(blobs, fh, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError as exc:  # the workspace is full: the files still go, the variables not
        try:
            os.remove(os.path.join(directory, NAMESPACE))
        except OSError:
            pass
        skipped.extend({"name": n, "reason": "dropped: no room in the workspace: "
                        + _reason(exc)} for n in blobs)
        blobs = {}
    with open(os.path.join(directory, MANIFEST), "w") as fh:
        json.dump({"skipped": skipped}, fh)
    return json.dumps({"variables": sorted(blobs)[:_MAX_NAMES], "skipped": skipped[:_MAX_NAMES],
                       "bytes": total})


def load(shell: Any, directory: str) -> str:
    """Put the saved globals back into the user namespace, then remove ``directory``."""
    variables: list[str] = []
    skipped: list[dict[str, str]] = []
    try:
        with open(os.path.join(directory, MANIFEST)) as fh:
            skipped = list(json.load(fh).get("skipped", []))
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(directory, NAMESPACE), "rb") as fh:
            blobs = pickle.load(fh)
    except FileNotFoundError:
        blobs = {}
    for name, blob in blobs.items():
        try:
            shell.user_ns[name] = pickle.loads(blob)
            variables.append(name)
        except Exception as exc:  # e.g. a module this interpreter cannot import
            skipped.append({"name": name, "reason": "could not be loaded: " + _reason(exc)})
    shutil.rmtree(directory, ignore_errors=True)
    return json.dumps({"variables": sorted(variables)[:_MAX_NAMES],
                       "skipped": skipped[:_MAX_NAMES]})
