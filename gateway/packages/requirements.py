"""What may be asked for: PEP 508 requirements (a name, extras, a version specifier, a marker
and nothing else) and the operator's allow and deny lists.

The same checks answer REST (400 ``invalid_requirement``, 403 ``package_not_allowed``) and a
``%pip install`` from a cell (the same message, printed in the cell).
"""

from __future__ import annotations

import fnmatch
import re

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from gateway import errors
from gateway.settings import Settings

MAX_REQUIREMENTS = 50
MAX_LENGTH = 400  # characters of one requirement
# names pip would take for a local file rather than a project on the index
_ARCHIVES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz")


def parse(entries: list[str], settings: Settings) -> list[Requirement]:
    """The requirements of one call, checked. Raises InvalidRequirement naming the first bad
    entry, PackageNotAllowed naming the first refused name."""
    if not entries:
        raise errors.InvalidRequirement("name at least one package")
    if len(entries) > MAX_REQUIREMENTS:
        raise errors.InvalidRequirement(
            f"at most {MAX_REQUIREMENTS} packages per call ({len(entries)} given)")
    parsed = [_one(entry, i) for i, entry in enumerate(entries)]
    for req in parsed:
        check_allowed(req.name, settings)
    return parsed


def _one(entry: str, index: int) -> Requirement:
    shown = entry[:80] + ("..." if len(entry) > 80 else "")

    def bad(why: str) -> errors.InvalidRequirement:
        return errors.InvalidRequirement(f"packages[{index}] {shown!r}: {why}",
                                         details={"index": index, "entry": shown})

    text = entry.strip()
    if not text:
        raise bad("empty")
    if len(text) > MAX_LENGTH or any(ord(c) < 32 for c in text):
        raise bad(f"not a requirement (at most {MAX_LENGTH} printable characters)")
    if text.startswith("-"):
        raise bad("pip options are not accepted (the operator chooses the index)")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        why = "a URL, path or file is not accepted" if any(c in text for c in "/\\:") else str(
            exc).splitlines()[0]
        raise bad(f"not a PEP 508 requirement: {why}") from None
    if req.url:
        raise bad("direct references (name @ URL) are not accepted")
    if req.name.lower().endswith(_ARCHIVES) or req.name.startswith("."):
        raise bad("a local file or path is not accepted: name a package")
    return req


def check_allowed(name: str, settings: Settings) -> None:
    """Raises PackageNotAllowed if the operator's lists refuse ``name`` (denylist first; an
    empty allowlist allows every name)."""
    canonical = canonicalize_name(name)

    def matches(patterns: list[str]) -> bool:  # names compared canonical: Foo_Bar = foo-bar
        return any(fnmatch.fnmatchcase(canonical, re.sub(r"[-_.]+", "-", p.lower()))
                   for p in patterns)

    if matches(settings.package_denylist):
        raise errors.PackageNotAllowed(f"package {name!r} is on this gateway's denylist")
    if settings.package_allowlist and not matches(settings.package_allowlist):
        raise errors.PackageNotAllowed(f"package {name!r} is not on this gateway's allowlist")
