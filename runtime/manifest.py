"""What a model folder we built holds: each file's size and SHA-256, written when the build ends.

A cached model that a disk error, a sync tool or a stray write has changed must be refused, not
loaded: damaged weights load without complaint and generate empty or garbled text. Hashing a
few hundred MB on every start would cost seconds, so a load compares each file's size and
modification time with the manifest (as git's index does) and hashes only a file whose stat
changed; a hash that still matches is fine (the file was only touched), any other difference
names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from slmflow.runtime.errors import ModelIntegrityError

MANIFEST = "slmflow-complete.json"


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB blocks (model weights and documents alike)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _entry(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}


def write_manifest(folder: Path, source: str) -> None:
    """Record every file of a finished build; its presence marks the folder complete."""
    files = {p.relative_to(folder).as_posix(): _entry(p) for p in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=1), encoding="utf-8")


def verify_manifest(folder: Path) -> None:
    """Raise :class:`ModelIntegrityError` naming the first file missing, resized or changed.

    A folder built before manifests held hashes gets them recorded now (there is nothing older to
    compare with)."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        write_manifest(folder, _source(path))
        return
    restat = False
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            raise _damaged(folder, name, "is missing")
        st = file.stat()
        if st.st_size != expected["size"]:
            raise _damaged(folder, name, f"has {st.st_size:,} bytes, {expected['size']:,} when built")
        if st.st_mtime_ns != expected["mtime_ns"]:
            if file_sha256(file) != expected["sha256"]:
                raise _damaged(folder, name, "has changed since it was built (its SHA-256 differs)")
            expected["mtime_ns"] = st.st_mtime_ns
            restat = True
    if restat:  # touched but intact: remember the new time so the next load skips the hash
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, path)


def _source(path: Path) -> str:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("source", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _damaged(folder: Path, name: str, what: str) -> ModelIntegrityError:
    return ModelIntegrityError(f"the cached model file {folder / name} {what}",
                               f"rebuild it: agents models --rebuild (or delete {folder})")
