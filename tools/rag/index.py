"""The document index: chunks and their embeddings in Chroma (a local ``PersistentClient``, or a
Chroma server given by URL), kept in step with a folder incrementally and safely.

Two collections: ``chunks`` (text, embedding, citation metadata) and ``files`` (one record per
indexed file: content hash, size, mtime, chunk count, chunks stored). Chunks are embedded and
committed in batches of EMBED_BATCH_CHUNKS; a file's record is written after its chunks, and
removed before they are replaced, so chunks without a record are an unfinished run's. A file
too big for one batch gets a partial record after each batch (``stored`` of ``chunks``), so a
kill loses at most one batch of work: the next run re-reads the file and embeds only the chunks
after ``stored`` (chunking is deterministic, and ids are the file's key and the chunk's number).
A run killed at any point therefore leaves an index that answers queries from every finished
file (and a partial file's stored chunks); the next run redoes just the rest, stray chunks
swept first. A full disk stops the run with one line naming the index; what was committed
before stays readable.

A file is re-embedded only when its content hash changed; size and mtime spare the hashing of
files that were not touched. Deleted files lose their chunks and record.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel
from slmflow.runtime.embedded import cache_root
from slmflow.runtime.embeddings import Embedder, load_embedder, model_fingerprint
from slmflow.runtime.errors import SlmflowError
from slmflow.runtime.manifest import file_sha256
from slmflow.tools.rag.chunking import Chunk, chunk_document
from slmflow.tools.rag.loaders import LoadError, load_document

log = logging.getLogger("slmflow.rag")

INDEX_META = "slmflow-index.json"
EMBED_BATCH_CHUNKS = 256
# File records need a vector (Chroma would otherwise embed them with a model it downloads).
_NO_VECTOR = [1.0]
SKIPPED_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox"}


class IndexUnusableError(SlmflowError):
    """The folder or index cannot be used as asked."""


class IndexSettings(BaseModel):
    """What the index was built with; a run with other settings would mix incompatible vectors."""

    folder: str
    embedder: str
    dimension: int
    chunk_tokens: int = 200
    overlap_tokens: int = 32


class IndexProgress(BaseModel):
    """Where an index update stands: ``done`` of ``total`` changed files, the rates so far, and
    inside the file being worked on (``file``) how far it is: ``part_done`` of ``part_total``
    ``part_unit`` (pages read of a PDF, chunks embedded of a big file), so a long file shows
    movement instead of a bar stuck at 0."""

    folder: str
    done: int
    total: int
    files_per_s: float
    chunks_per_s: float
    file: str = ""
    part_done: int = 0
    part_total: int = 0
    part_unit: str = ""


OnIndexProgress = Callable[[IndexProgress], None]


class IndexStats(BaseModel):
    files_seen: int = 0
    files_embedded: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    chunks_added: int = 0
    chunks_total: int = 0
    warnings: list[str] = []  # files skipped, and why
    notes: list[str] = []  # files indexed with a caveat (e.g. read in a legacy encoding)
    seconds: float = 0.0

    @property
    def files_per_s(self) -> float:
        return self.files_embedded / self.seconds if self.seconds else 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_added / self.seconds if self.seconds else 0.0


def default_index_dir(folder: Path) -> Path:
    """``<cache>/indexes/<folder name>-<hash of its absolute path>``: one index per folder."""
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    return cache_root() / "indexes" / f"{folder.resolve().name or 'root'}-{key}"


def chromadb_persistent(path: Path):
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def chroma_server(url: str):
    """A client of the Chroma server at ``url``, checked to answer before anything is written."""
    import chromadb
    from chromadb.config import Settings

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise IndexUnusableError(f"index URL '{url}' is not an http(s) URL", "write it as http://host:port")
    try:
        client = chromadb.HttpClient(host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https"
                                                                                  else 8000),
                                     ssl=parsed.scheme == "https", settings=Settings(anonymized_telemetry=False))
        client.heartbeat()
    except Exception as err:  # chromadb raises plain ValueErrors and httpx errors alike for an absent server
        raise IndexUnusableError(f"no Chroma server answers at {url} ({err.__class__.__name__})",
                                 "start one with `chroma run --path DIR --port PORT`") from None
    return client


def _name(prefix: str, collection: str) -> str:
    """Chroma collection names: 3-512 of [a-zA-Z0-9._-], starting and ending alphanumeric."""
    if not prefix:
        return collection
    safe = re.sub(r"[^a-zA-Z0-9._-]", "-", prefix).strip("._-") or "folder"
    return f"{safe[:400]}-{collection}"


def walk(folder: Path, include: list[str] | None = None,
         on_unreadable: Callable[[str], None] | None = None) -> list[Path]:
    """Files under ``folder`` (hidden and tool folders skipped; ``include`` globs match file names).
    A subfolder that cannot be listed is told to ``on_unreadable`` by its path in ``folder``, so a
    user learns which files the index is missing instead of finding fewer answers."""

    def unreadable(err: OSError) -> None:
        if on_unreadable is not None:
            where = Path(err.filename).relative_to(folder).as_posix() if err.filename else str(folder)
            on_unreadable(f"{where}/: folder unreadable ({err.strerror})")

    found = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or (include and not any(fnmatch.fnmatch(name, g) for g in include)):
                continue
            found.append(Path(root) / name)
    return found


class DocumentIndex:
    """A folder's chunks in Chroma (see the module docstring)."""

    def __init__(self, folder: str | Path, index_dir: str | Path | None = None, embedder: Embedder | None = None,
                 chunk_tokens: int = 200, overlap_tokens: int = 32, index_url: str | None = None) -> None:
        """``index_url`` (``http://host:port``) keeps the index in a Chroma server instead of a local
        folder: collections are named after the folder, and the settings are stored with them."""
        self.folder = Path(folder).expanduser()
        if not self.folder.exists():
            raise IndexUnusableError(f"folder {self.folder} does not exist", "check the path")
        if not self.folder.is_dir():
            raise IndexUnusableError(f"{self.folder} is a file, not a folder", "pass the folder that holds it")
        if index_url and index_dir:
            raise IndexUnusableError("both an index folder and an index URL were given", "pass one of them")
        self.folder = self.folder.resolve()
        self.dir = Path(index_dir).expanduser() if index_dir else default_index_dir(self.folder)
        self.embedder = embedder or load_embedder()
        self.settings = IndexSettings(folder=str(self.folder), embedder=self.embedder.fingerprint,
                                      dimension=self.embedder.dimension, chunk_tokens=chunk_tokens,
                                      overlap_tokens=overlap_tokens)
        # On a server: "<folder name>-<hash of its path>", one pair of collections per folder.
        prefix = self.dir.name if index_url else ""
        self.location = f"{index_url} ({prefix})" if index_url else str(self.dir)
        if index_url:
            self.client = chroma_server(index_url)
        else:
            self._check_settings(self._stored_in_file())
            self.client = chromadb_persistent(self.dir / "chroma")
        self._open_collections(prefix)
        if index_url:
            self._check_settings(self._stored_in_collection())
        if self.reembedding:
            self._start_over(prefix, index_url)

    def _open_collections(self, prefix: str) -> None:
        self.chunks = self.client.get_or_create_collection(
            _name(prefix, "chunks"), embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
        self.files = self.client.get_or_create_collection(_name(prefix, "files"), embedding_function=None)

    def _start_over(self, prefix: str, index_url: str | None) -> None:
        """Empty the index of another embedder's vectors and record ours; the next update embeds
        every file. The settings are written last, so a kill before leaves the old ones, and the
        next run starts over again."""
        log.warning("the index in %s was built with embedder %s; embedding the folder again with %s",
                    self.location, self.reembedding, self.settings.embedder)
        for name in ("chunks", "files"):
            self.client.delete_collection(_name(prefix, name))
        self._open_collections(prefix)
        if index_url:
            self.files.modify(metadata={"slmflow_settings": self.settings.model_dump_json()})
        else:
            self._write_settings()

    def _write_settings(self) -> None:
        meta = self.dir / INDEX_META
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_name(f"{meta.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
        tmp.write_text(self.settings.model_dump_json(indent=1), encoding="utf-8")
        tmp.replace(meta)

    def _stored_in_file(self) -> IndexSettings | None:
        meta = self.dir / INDEX_META
        if not meta.exists():
            self._write_settings()
            return None
        try:
            return IndexSettings.model_validate_json(meta.read_text(encoding="utf-8"))
        except ValueError as err:
            raise IndexUnusableError(f"{meta} is corrupt ({err.__class__.__name__})",
                                     "delete the index folder to rebuild it") from None

    def _stored_in_collection(self) -> IndexSettings | None:
        stored = (self.files.metadata or {}).get("slmflow_settings")
        if stored is None:
            self.files.modify(metadata={"slmflow_settings": self.settings.model_dump_json()})
            return None
        return IndexSettings.model_validate_json(stored)

    def _check_settings(self, stored: IndexSettings | None) -> None:
        self.reembedding: str | None = None
        if stored is None:
            return
        recorded = Path(stored.embedder)  # built before fingerprints: the embedder's install path
        if recorded.is_absolute() and recorded.is_dir() and model_fingerprint(recorded) == self.settings.embedder:
            stored = stored.model_copy(update={"embedder": self.settings.embedder})
        mismatched = [k for k in ("chunk_tokens", "overlap_tokens") if getattr(stored, k) != getattr(self.settings, k)]
        # Another embedder (model, or precision) makes other vectors: the folder is embedded again
        # rather than mixed; chunk settings are the user's to choose, so a mismatch there is asked.
        self.reembedding = stored.embedder if stored.embedder != self.settings.embedder else None
        if mismatched:
            raise IndexUnusableError(
                f"the index in {self.location} was built with other "
                f"{', '.join(mismatched)} ({', '.join(str(getattr(stored, k)) for k in mismatched)})",
                "use those settings, another --index folder, or delete this index to rebuild it")

    # --- reading ---------------------------------------------------------------------------------

    def count(self) -> int:
        return self.chunks.count()

    def all_chunks(self) -> list[Chunk]:
        """Every chunk (for BM25), in a stable order."""
        got = self.chunks.get(include=["documents", "metadatas"])
        return chunks_from_query(got["ids"], got["documents"], got["metadatas"])

    def file_records(self) -> dict[str, dict]:
        got = self.files.get(include=["metadatas"])
        return dict(zip(got["ids"], got["metadatas"], strict=True))

    # --- writing ---------------------------------------------------------------------------------

    def update(self, include: list[str] | None = None, ocr: bool = True,
               on_progress: OnIndexProgress | None = None) -> IndexStats:
        """Bring the index in step with the folder; see the module docstring for the guarantees.
        ``on_progress`` is told where the work stands before the first changed file and after
        each one (the CLI draws a bar from it; library code draws nothing)."""
        from slmflow.tools.rag.ocr import ocr_image

        start = time.perf_counter()
        stats = IndexStats()
        paths = walk(self.folder, include, on_unreadable=stats.warnings.append)
        stats.files_seen = len(paths)
        records = self.file_records()
        current = {self._relative(p): p for p in paths}
        self._sweep(records, current, stats)

        todo: list[tuple[str, Path, os.stat_result]] = []
        for rel, path in current.items():
            try:
                st = path.stat()
            except OSError as err:
                stats.warnings.append(f"{rel}: unreadable ({err.strerror})")
                continue
            record = records.get(rel)
            if record and _complete(record) and record["size"] == st.st_size \
                    and record["mtime_ns"] == str(st.st_mtime_ns):
                stats.files_unchanged += 1
            else:
                todo.append((rel, path, st))

        pending: list[_PendingFile] = []
        if todo:
            log.info("indexing %d new or changed files of %s", len(todo), self.folder)
        done = 0

        def tell(file: str = "", part_done: int = 0, part_total: int = 0, unit: str = "") -> None:
            if on_progress is not None and todo:
                elapsed = max(time.perf_counter() - start, 1e-9)
                on_progress(IndexProgress(folder=self.folder.name, done=done, total=len(todo),
                                          files_per_s=stats.files_embedded / elapsed,
                                          chunks_per_s=stats.chunks_added / elapsed, file=file,
                                          part_done=part_done, part_total=part_total, part_unit=unit))

        tell()
        for position, (rel, path, st) in enumerate(todo):
            done = position  # files finished, read by tell(); this one is not while it is read
            self._prepare(rel, path, st, records.get(rel), ocr_image if ocr else None, pending, stats,
                          on_page=lambda k, n, rel=rel: tell(rel, k, n, "pages"))
            if sum(p.unsent for p in pending) >= EMBED_BATCH_CHUNKS:
                self._write(pending, stats, tell)
            done = position + 1
            tell()
        self._write(pending, stats, tell)
        tell()  # the rates with the last batch embedded
        for warning in stats.warnings:  # info: the caller reports them (the CLI prints each once)
            log.info("skipped %s", warning)
        for note in stats.notes:
            log.info("note: %s", note)
        stats.chunks_total = self.count()
        stats.seconds = time.perf_counter() - start
        return stats

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def _sweep(self, records: dict[str, dict], current: dict[str, Path], stats: IndexStats) -> None:
        """Remove files that are gone, and chunks that no finished file owns (an interrupted run's)."""
        gone = [rel for rel in records if rel not in current]
        if gone:
            self.files.delete(ids=gone)
            for rel in gone:
                self.chunks.delete(where={"path": rel})
            stats.files_removed = len(gone)
        owned = {rel for rel in records if rel in current}
        got = self.chunks.get(include=["metadatas"])
        stray = [cid for cid, m in zip(got["ids"], got["metadatas"], strict=True) if m["path"] not in owned]
        if stray:
            self.chunks.delete(ids=stray)

    def _prepare(self, rel, path, st, record, ocr, pending, stats, on_page=None) -> None:
        """Load and chunk one changed file, queueing it for embedding; unchanged content is only
        re-stamped, and a file a killed run left partly stored goes on after its stored chunks."""
        try:
            digest = file_sha256(path)
        except OSError as err:
            stats.warnings.append(f"{rel}: unreadable ({err.strerror})")
            return
        meta = {"hash": digest, "size": st.st_size, "mtime_ns": str(st.st_mtime_ns)}
        if record and record["hash"] == digest and _complete(record):
            self.files.upsert(ids=[rel], metadatas=[{**record, **meta}], embeddings=[_NO_VECTOR])
            stats.files_unchanged += 1
            return
        resumed = record is not None and record["hash"] == digest  # a partial record of this content
        try:
            doc = load_document(path, ocr, on_page)
        except LoadError as err:
            stats.warnings.append(f"{rel}: {err}")
            doc = None
        except Exception as err:  # a parser's own bug on one file (pypdf, python-docx) must not stop the run
            first = str(err).splitlines()[0] if str(err) else ""
            stats.warnings.append(f"{rel}: unreadable ({type(err).__name__}: {first})")
            doc = None
        if record and (doc is None or not resumed):  # the old version goes first: its record, then its chunks
            self.files.delete(ids=[rel])
            self.chunks.delete(where={"path": rel})
        if doc is None:
            return
        doc.path = rel
        stats.notes += [f"{rel}: {note}" for note in doc.notes]
        chunks = chunk_document(doc, self.embedder.tokenizer, self.settings.chunk_tokens,
                                self.settings.overlap_tokens)
        if not chunks:
            stats.warnings.append(f"{rel}: no text found")
        stored = min(int(record.get("stored", 0)), len(chunks)) if resumed else 0
        if stored:
            stats.notes.append(f"{rel}: resumed after the {stored} chunks an interrupted run stored")
        pending.append(_PendingFile(rel=rel, meta={**meta, "chunks": len(chunks)}, chunks=chunks, sent=stored))

    def _write(self, pending: list[_PendingFile], stats: IndexStats, tell: Callable[..., None]) -> None:
        """Embed and commit the queued files' chunks a batch at a time, then (only then) each file's
        record; a file still unfinished after a batch gets a partial record, so a kill loses one
        batch. Chroma's own errors are turned into one line (a full disk most of all)."""
        try:
            self._write_batches(pending, stats, tell)
        except Exception as err:  # chromadb wraps sqlite's and the file system's errors in its own types
            if _disk_full(err):
                raise IndexUnusableError(
                    f"the disk holding the index {self.location} is full; {stats.files_embedded} files were "
                    f"stored this run before it filled",
                    "free some space and run again: the index still answers from what was stored, and the "
                    "next run goes on from there") from None
            raise

    def _write_batches(self, pending: list[_PendingFile], stats: IndexStats, tell: Callable[..., None]) -> None:
        while pending:
            batch: list[tuple[_PendingFile, Chunk]] = []  # the next chunks in file order, up to a batch
            for file in pending:
                room = EMBED_BATCH_CHUNKS - len(batch)
                batch += [(file, chunk) for chunk in file.chunks[file.sent:file.sent + room]]
                if len(batch) >= EMBED_BATCH_CHUNKS:
                    break
            if batch:
                chunks = [c for _, c in batch]
                vectors = self.embedder.embed([c.embedding_text() for c in chunks])
                self.chunks.upsert(ids=[c.id for c in chunks], embeddings=vectors,
                                   documents=[c.text for c in chunks], metadatas=[_metadata(c) for c in chunks])
                for file, _ in batch:
                    file.sent += 1
                stats.chunks_added += len(chunks)
            finished = [f for f in pending if not f.unsent]
            started = [f for f in pending if f.unsent and f.sent]  # a big file, part stored
            # "stored" is always written: Chroma merges a record's metadata on upsert, so a key left
            # out would keep the partial count of an earlier batch.
            records = [{**f.meta, "stored": f.sent} for f in [*finished, *started]]
            if records:
                self.files.upsert(ids=[f.rel for f in [*finished, *started]], metadatas=records,
                                  embeddings=[_NO_VECTOR] * len(records))
            stats.files_embedded += len(finished)
            log.info("stored %d chunks; %d files finished", len(batch), len(finished))
            pending[:] = [f for f in pending if f.unsent]
            if started:
                tell(started[0].rel, started[0].sent, len(started[0].chunks), "chunks")


@dataclass
class _PendingFile:
    """A changed file's chunks waiting to be embedded; ``sent`` of them are committed already (a
    plain dataclass: a big file's tens of thousands of chunks are not validated again)."""

    rel: str
    meta: dict
    chunks: list[Chunk]
    sent: int = 0

    @property
    def unsent(self) -> int:
        return len(self.chunks) - self.sent


def _complete(record: dict) -> bool:
    """A file record that covers all its chunks (records written before partial ones have no ``stored``)."""
    return "stored" not in record or int(record["stored"]) >= int(record.get("chunks", 0))


def _disk_full(err: BaseException) -> bool:
    """Whether an error, or one it was raised from, is the file system saying it has no space."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if re.search(r"disk is full|no space left|SQLITE_FULL|quota exceeded", str(seen), re.I):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _metadata(chunk: Chunk) -> dict:
    meta = {"path": chunk.path, "title": chunk.title, "heading": chunk.heading, "start": chunk.start,
            "end": chunk.end}
    if chunk.page is not None:
        meta["page"] = chunk.page
    return meta


def _chunk_from(chunk_id: str, text: str, meta: dict) -> Chunk:
    return Chunk(id=chunk_id, path=meta["path"], title=meta.get("title", ""), heading=meta.get("heading", ""),
                 page=meta.get("page"), start=meta["start"], end=meta["end"], text=text)


def chunks_from_query(ids: Iterable[str], texts: Iterable[str], metas: Iterable[dict]) -> list[Chunk]:
    return [_chunk_from(i, t, m) for i, t, m in zip(ids, texts, metas, strict=True)]

