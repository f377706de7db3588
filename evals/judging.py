"""The judge behind the ``Judge`` check: a local model answering yes or no under a Choice.

A free-text verdict from a 135M model would be anything; constrained to ``yes``/``no`` it is
always a verdict, and greedy decoding makes it the same verdict for the same prompt, which is
what lets it be cached with the outputs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from slmflow.evals.output_cache import cache_key, current_cache

_judge_spec: str | None = None
_judge = None
_lock = threading.Lock()


@contextlib.contextmanager
def use_judge(spec: str | None) -> Iterator[None]:
    """Judge with the model ``spec`` (None: the embedded default) inside the block; it loads on
    the first verdict only, so files without a Judge check load no judge."""
    global _judge_spec, _judge
    previous = (_judge_spec, _judge)
    _judge_spec, _judge = spec, None
    try:
        yield
    finally:
        _judge_spec, _judge = previous


def _model():
    global _judge
    with _lock:
        if _judge is None:
            from slmflow.runtime.model import load_model

            _judge = load_model(_judge_spec)
        return _judge


def verdict(prompt: str) -> str:
    """``yes`` or ``no``, from the cache when this judge already ruled on this prompt."""
    cache = current_cache()
    key = cache_key(kind="judge", judge=_judge_spec or "embedded", prompt=prompt)
    if (hit := cache.get(key)) is not None:
        return hit
    from slmflow.runtime.constraints import Choice

    said = _model().generate([{"role": "user", "content": prompt}], constraint=Choice(["yes", "no"]),
                             max_tokens=2).text()
    cache.put(key, said)
    return said
