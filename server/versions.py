"""Minimum versions of the runtime dependencies that carry security fixes, checked when
``switchboard serve`` starts (docs/security.md, "Supply chain").

``pip`` enforces ``install_requires`` only when it installs Switchboard; an environment built
another way (a distribution's packages, a pinned lock file, an image layer reused) may hold an
older release. ``serve`` refuses to start on one, naming the package, the minimum and why.

:func:`problems` is pure (a mapping of installed versions in, messages out) so it can be tested
with any version; :func:`installed` reads the real environment with ``importlib.metadata``.
A leaf module: the standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import Mapping


@dataclass(frozen=True)
class Minimum:
    package: str
    version: str
    why: str


#: the floors of setup.cfg's install_requires that are there for security fixes
MINIMUMS: tuple[Minimum, ...] = (
    Minimum("aiohttp", "3.14.5",
            "older releases have published security advisories in the HTTP parser and the "
            "WebSocket server this server is built on"),
    Minimum("PyJWT", "2.13",
            "older releases have published security advisories in token verification, which "
            "every connection's authentication relies on"),
)

_RELEASE = re.compile(r"(\d+(?:\.\d+)*)(.*)")
#: what may follow the release numbers of a final release: nothing, or a post-release
_FINAL = re.compile(r"|(?:post|rev|r)?\d*")


def parse(version: str) -> tuple[tuple[int, ...], bool] | None:
    """``(release numbers without trailing zeros, is a final release)``; None when
    ``version`` does not start with a number. A pre-release or development release
    (``3.14.5rc1``, ``3.14.5.dev0``) comes before its final release; a post-release
    (``3.14.5.post1``) or a local version (``3.14.5+deb1``) does not, and anything else after
    the numbers is taken for a pre-release."""
    match = _RELEASE.fullmatch(version.strip().lower().lstrip("v"))
    if match is None:
        return None
    numbers = [int(n) for n in match.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    suffix = match.group(2).split("+", 1)[0].lstrip(".-_")
    final = _FINAL.fullmatch(suffix) is not None
    return tuple(numbers), final


def at_least(version: str, minimum: str) -> bool:
    """Whether ``version`` is ``minimum`` or newer; an unreadable version is not."""
    have, need = parse(version), parse(minimum)
    if have is None or need is None:
        return False
    return have[0] > need[0] or (have[0] == need[0] and have[1] >= need[1])


def problems(versions: Mapping[str, str | None],
             minimums: tuple[Minimum, ...] = MINIMUMS) -> list[str]:
    """One message per package of ``minimums`` that ``versions`` (package name -> installed
    version, None when not installed) lacks or holds too old; empty when all is well."""
    found = []
    for floor in minimums:
        have = versions.get(floor.package)
        if have is None:
            found.append(f"{floor.package} is not installed; {floor.version} or newer is "
                         f"required: {floor.why}")
        elif not at_least(have, floor.version):
            found.append(f"{floor.package} {have} is installed; {floor.version} or newer is "
                         f"required: {floor.why}")
    return found


def installed(minimums: tuple[Minimum, ...] = MINIMUMS) -> dict[str, str | None]:
    """The installed version of each package of ``minimums`` (None when absent)."""
    versions: dict[str, str | None] = {}
    for floor in minimums:
        try:
            versions[floor.package] = metadata.version(floor.package)
        except metadata.PackageNotFoundError:
            versions[floor.package] = None
    return versions
