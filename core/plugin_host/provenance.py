"""Where a registered name's code comes from: distribution, version and, for code that can
change without a version bump (editable installs, ``--plugin`` modules), a hash of its source.

The run stage puts this into each pairing's run_key and tags, so a changed or swapped plugin
re-runs the pairing instead of reusing a result computed by other code.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Provenance:
    distribution: str  # "" for a --plugin module outside any distribution
    version: str
    source_hash: str  # "" for a regular (non-editable) install: the version says it all

    def describe(self) -> str:
        """``attnbench 0.1.0 source 1a2b3c4d5e6f``, ``my-plugin 1.2``, ``--plugin source 9f8e...``."""
        who = f"{self.distribution} {self.version}".strip() if self.distribution else "--plugin"
        return f"{who} source {self.source_hash}" if self.source_hash else who


def provenance_of(module, factory, distribution: str | None) -> Provenance:
    """Provenance of ``factory`` registered by ``module`` (a plugin's entry-point or --plugin module)."""
    version = ""
    if distribution:
        try:
            version = md.distribution(distribution).version
        except md.PackageNotFoundError:
            pass
    files = _source_files(module) | _source_files(sys.modules.get(getattr(factory, "__module__", ""), None))
    if distribution and version and files and all(_installed(path) for path in files):
        return Provenance(distribution, version, "")  # a regular install: the version says it all
    return Provenance(distribution or "", version, _hash_files(files))


def _installed(path: Path) -> bool:
    """Inside site-packages: installed from a built distribution, not run from a source tree
    (an editable install or a --plugin module can change without a new version).
    The location is what counts: metadata such as PEP 610's direct_url.json is missing when a
    stale ``*.egg-info`` in the working directory shadows the installed distribution."""
    return any(part in ("site-packages", "dist-packages") for part in path.parts)


def _source_files(module) -> set[Path]:
    """The module's file, or every .py file of a package."""
    if module is None:
        return set()
    try:
        file = Path(inspect.getsourcefile(module) or "")
    except TypeError:  # built-in or namespace module: no source to hash
        return set()
    if not file.is_file():
        return set()
    if file.name == "__init__.py":
        return set(file.parent.rglob("*.py"))
    return {file}


def _hash_files(files: set[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
