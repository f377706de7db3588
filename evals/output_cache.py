"""The cache of scenario outputs: re-running an unchanged case costs a file read, not a model run.

An entry is keyed by everything that decides the output: the target's fingerprint (its file's
bytes, its documents folder's listing, its model spec), the case's input, the settings and
slmflow's own code. Change any of them and the case runs again; ``--no-cache`` runs everything.
Entries are one JSON file each, written atomically, so concurrent cases and an interrupted run
leave no torn entry behind.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmflow import __version__
from slmflow.runtime.embedded import cache_root


@functools.cache
def code_fingerprint() -> str:
    """slmflow's version and its modules' names, sizes and modification times: an output made by
    other code (an upgrade, an edit in a checkout) is not reused."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(root.glob("[!.]*/**/*.py")):
        if "tests" not in path.relative_to(root).parts[:1]:
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """A sha256 over ``parts`` (JSON, keys sorted) and slmflow's code (:func:`code_fingerprint`)."""
    text = json.dumps({**parts, "slmflow": code_fingerprint()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class OutputCache:
    """JSON values by key under ``folder`` (default: the slmflow cache's eval-outputs)."""

    def __init__(self, folder: Path | None = None, enabled: bool = True) -> None:
        self.folder = Path(folder) if folder else cache_root() / "eval-outputs"
        self.enabled = enabled

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def has(self, key: str) -> bool:
        """Whether ``key`` has an entry."""
        return self.enabled and self._path(key).is_file()

    def get(self, key: str) -> Any | None:
        if not self.enabled:
            return None
        try:
            value = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):  # absent, or damaged: run it again
            value = None
        return value

    def put(self, key: str, value: Any) -> None:
        if not self.enabled:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(value), encoding="utf-8")
        tmp.replace(path)


_current = OutputCache(enabled=False)


def current_cache() -> OutputCache:
    """The cache of the scenario run in progress (a disabled one outside any run)."""
    return _current


@contextlib.contextmanager
def use_cache(cache: OutputCache) -> Iterator[OutputCache]:
    global _current
    previous, _current = _current, cache
    try:
        yield cache
    finally:
        _current = previous
