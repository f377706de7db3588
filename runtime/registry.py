"""The process's loaded models, embedders and vision models, and the one worker that drives each.

Loading a model takes seconds and gigabytes, so every caller shares one instance per spec: two
threads asking for the same spec at once get the same object and the weights load once (the
second waits on a per-key lock, not on every other load). :func:`unload` lets a long-lived
process (``agents serve``, a notebook) give the memory back; the next request loads it again.

Each loaded model has exactly one :class:`~slmflow.runtime.worker.ModelWorker`
(:func:`worker_for`): however many names a server gives one model, their requests share its
threads (one, or as many as the model batches) instead of racing on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from slmflow.runtime.worker import ModelWorker

T = TypeVar("T")
DEFAULT_MAX_QUEUE = 64


class Registry:
    """Objects by key, each built once by the first caller's ``load``; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._workers: dict[int, tuple[Any, ModelWorker]] = {}

    def get(self, key: str, load: Callable[[], T]) -> T:
        """The object under ``key``, built by ``load()`` if none is held yet. Loads of other keys
        run meanwhile; a failed load leaves nothing behind, so the next call tries again."""
        with self._lock:
            if key in self._items:
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            item = load()
            with self._lock:
                self._items[key] = item
                self._loading.pop(key, None)
            return item

    def unload(self, key: str) -> bool:
        """Forget the object under ``key`` (and its worker); whether one was held. Callers that
        still hold it keep a working object; the registry just stops handing it out."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is not None:
                self._workers.pop(id(item), None)
            return item is not None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._workers.clear()

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def worker_for(self, model: Any, max_queue: int | None = None) -> ModelWorker:
        """The one worker that drives ``model``, made on first use (named by its spec) and the
        same object for every later caller. ``max_queue``: how many requests it admits (64 by
        default); a server passes its own limit, which then holds for every caller."""
        with self._lock:
            held = self._workers.get(id(model))
            if held is None or held[0] is not model:  # an id can be reused once its object is gone
                held = (model, ModelWorker(str(getattr(model, "spec", "model")), DEFAULT_MAX_QUEUE,
                                           concurrency_of(model)))
                self._workers[id(model)] = held
            if max_queue is not None:
                held[1].max_queue = max_queue
            return held[1]


def concurrency_of(model: Any) -> int:
    """How many generations ``model`` runs at once: its own ``concurrency`` (a batching model's
    scheduler size, an endpoint's), else one; a caller's own model is driven one at a time."""
    value = getattr(model, "concurrency", 1)
    return value if isinstance(value, int) and value >= 1 else 1


#: The process's registry: models (runtime/model.py), embedders, vision models.
REGISTRY = Registry()


def unload(key: str) -> bool:
    """Unload what ``key`` names: a model spec as given to ``load_model`` (``embedded``,
    ``hf:/path``; read the same way, so ``embedded`` finds ``embedded:onnx``), ``embedder:PATH``
    or ``vision:SPEC``; whether anything was held. Once no caller holds the model either, its
    memory goes back (a batching model's scheduler thread ends by itself)."""
    if REGISTRY.unload(key):
        return True
    from slmflow.runtime.errors import SlmflowError
    from slmflow.runtime.specs import parse_spec

    try:
        canonical = str(parse_spec(key))
    except SlmflowError:  # not a model spec: nothing else it could name
        return False
    return canonical != key and REGISTRY.unload(canonical)


def worker_for(model: Any, max_queue: int | None = None) -> ModelWorker:
    """See :meth:`Registry.worker_for`."""
    return REGISTRY.worker_for(model, max_queue)
