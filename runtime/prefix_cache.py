"""Prefix reuse: keep KV states across calls and prefill only the part of a prompt not seen before.

Each cached state is one token path with its KV cache. A new request takes the state sharing the
longest token prefix with it, rewinds it to that prefix and prefills only the rest — across turns,
agents and graph nodes that share a model. Prefixes are matched on token ids, not strings, so a chat
template that re-renders history is reused exactly as far as its tokens agree.

Exactness rules (outputs with the cache must equal outputs without it, token for token):

* only the first ``exact`` tokens of a state count as reusable: on backends whose one-row kernels
  differ from their batched ones (``batch_invariant`` false, e.g. int4 onnxruntime-genai), tokens
  produced by decoding are not, since a fresh prefill would compute their KV in a batch;
* at least ``min_suffix`` prompt tokens are always prefilled (1 token would take the one-row kernel
  on such backends, and at least one is needed to get logits).

States are taken out of the pool while a generation uses them and put back when it ends. Backends
that can copy a state (transformers, onnxruntime-genai text models in their slot arena) fork a
state whose tail would otherwise be cut, so a branch does not destroy its sibling, and a prompt
that shares a long prefix with one being prefilled right now waits for it and forks it (parallel
branches prefill their common system prompt once); backends that cannot (onnxruntime-genai
multimodal generators) hand the state over and keep the most recent conversation. Least recently
used states are evicted past the budget. The pool is shared by the threads of a batching model.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from pydantic import BaseModel
from slmflow.runtime.backends.base import Backend, Sequence


class CacheBudget(BaseModel):
    """Most KV memory the cache may hold for one model; ``None`` means no limit of that kind."""

    max_bytes: int | None = 2 * 1024**3
    max_tokens: int | None = None


class CacheStats(BaseModel):
    """Counters since the model was loaded, plus what is held now."""

    policy: str
    hits: int = 0
    misses: int = 0
    tokens_reused: int = 0
    tokens_prefilled: int = 0
    evictions: int = 0
    states_held: int = 0
    tokens_held: int = 0
    bytes_held: int = 0


@dataclass
class CachedState:
    """A KV state and the tokens it holds; the first ``exact`` of them are reusable exactly."""

    seq: Sequence
    tokens: list[int] = field(default_factory=list)
    exact: int = 0
    last_used: int = 0

    def truncate(self, keep: int) -> None:
        if self.seq.length != keep:
            self.seq.rewind(keep)
        del self.tokens[keep:]
        self.exact = min(self.exact, keep)

    def record(self, path: list[int], prompt_len: int, batch_invariant: bool) -> None:
        """After a generation over ``path``: note which tokens the KV holds and which are exact."""
        self.tokens = path[: self.seq.length]
        self.exact = len(self.tokens) if batch_invariant else min(prompt_len, len(self.tokens))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


#: A prompt sharing this many more tokens with one being prefilled than with any held state waits
#: for that prefill and forks it, instead of prefilling the same tokens beside it.
MIN_SHARED_WAIT = 32
#: The longest a prompt waits for another's prefill before prefilling by itself.
SHARED_WAIT_S = 60.0


@dataclass(eq=False)
class _InFlight:
    """A generation's prompt while it runs: what a prompt sharing its prefix may fork."""

    ids: list[int]
    state: CachedState
    prefilled: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


class PrefixCache:
    """One model's held KV states: ``acquire`` hands out the state sharing the longest exact
    prefix with a prompt (or a fresh or recycled one), so a generation prefills only the rest;
    states beyond the budget are dropped least recently used first. Thread-safe: generations of
    a batching model take and return states from several threads at once."""

    def __init__(self, backend: Backend, budget: CacheBudget | None = None, enabled: bool = True) -> None:
        self.backend = backend
        self.budget = budget or CacheBudget()
        self.enabled = enabled
        self.min_suffix = 1 if backend.batch_invariant else 2
        self._states: list[CachedState] = []
        self._lock = threading.RLock()
        self._inflight: dict[int, _InFlight] = {}  # id(state) -> its generation's prompt
        self._clock = itertools.count(1)
        policy = "fork branches" if backend.can_fork else "keep whole states, most recent conversation first"
        self.stats = CacheStats(policy=policy if enabled else "disabled")

    def reusable(self, state: CachedState, ids: list[int]) -> int:
        """How many leading tokens of ``ids`` this state can serve exactly."""
        limit = min(state.exact, len(ids) - self.min_suffix)
        return max(0, min(common_prefix(state.tokens, ids), limit))

    def capacity_for(self, prompt_len: int, needed: int) -> int:
        """Room to ask for. A preallocating backend pays for every slot up front (onnxruntime-genai
        zeroes ~46 KiB per token of capacity for the embedded model), so a cached state gets room to
        double its prompt rather than the whole window: later turns fit, and an outgrown state costs
        one re-prefill, as a growing array costs one copy."""
        if not self.enabled:
            return needed
        return min(self.backend.context_length, max(needed, 2 * prompt_len) + 256)

    def acquire(self, ids: list[int], needed: int) -> tuple[CachedState, int]:
        """A state for a generation over ``ids`` and how many of them it already holds.

        Where states can be copied and another generation is prefilling a prompt that shares
        more of ``ids`` than any held state (branches of a graph sent out at once, with one system
        prompt and tools), this one waits for that prefill and forks it: the shared prefix is
        prefilled once. The caller says when its own prompt is in (:meth:`prefilled`)."""
        donor = self._donor(ids) if self.enabled and self.backend.can_fork else None
        state = None
        if donor is not None and donor[0].prefilled.wait(SHARED_WAIT_S) and donor[0].ok:
            state, cached = self._fork_inflight(*donor, ids)
        with self._lock:
            if state is None:
                state, cached = self._acquire(ids, needed)
            self._inflight[id(state)] = _InFlight(list(ids), state)
        return state, cached

    def _donor(self, ids: list[int]) -> tuple[_InFlight, int] | None:
        """The running generation whose prompt shares the most of ``ids``, if that is at least
        :data:`MIN_SHARED_WAIT` tokens more than the best held state serves."""
        with self._lock:
            held = max((self.reusable(s, ids) for s in self._states), default=0)
            best, shared = None, 0
            for entry in self._inflight.values():
                n = min(common_prefix(entry.ids, ids), len(ids) - self.min_suffix)
                if n > shared:
                    best, shared = entry, n
            return (best, shared) if best is not None and shared >= held + MIN_SHARED_WAIT else None

    def _fork_inflight(self, donor: _InFlight, shared: int, ids: list[int]) -> tuple[CachedState, int]:
        seq = donor.state.seq.fork()  # the donor decodes on; its first ``shared`` tokens are prefilled
        seq.rewind(shared)
        with self._lock:
            self.stats.hits += 1
            self.stats.tokens_reused += shared
            self.stats.tokens_prefilled += len(ids) - shared
        return CachedState(seq, list(ids[:shared]), shared), shared

    def prefilled(self, state: CachedState) -> None:
        """``state``'s prompt is in its KV: prompts waiting to share it may fork it now."""
        entry = self._inflight.get(id(state))
        if entry is not None:
            entry.ok = True
            entry.prefilled.set()

    def _acquire(self, ids: list[int], needed: int) -> tuple[CachedState, int]:
        best, best_len = None, 0
        for state in self._states:
            n = self.reusable(state, ids)
            if n > best_len and state.seq.capacity >= needed:
                best, best_len = state, n
        if best is not None:
            self.stats.hits += 1
            self.stats.tokens_reused += best_len
            if self.backend.can_fork and len(best.tokens) > best_len:
                state = CachedState(best.seq.fork(), list(best.tokens), best.exact)
                best.last_used = next(self._clock)
            else:
                self._states.remove(best)
                state = best
        else:
            self.stats.misses += 1
            state = self._recycle(needed) or CachedState(
                self.backend.new_sequence(self.capacity_for(len(ids), needed)))
            best_len = 0
        state.truncate(best_len)
        self.stats.tokens_prefilled += len(ids) - best_len
        self._refresh_held()
        return state, best_len

    def _recycle(self, needed: int) -> CachedState | None:
        """On a miss, reuse the least recently used state's memory when allocating another would
        break the budget (allocation is not free: onnxruntime-genai zeroes its whole KV buffer)."""
        if self.backend.can_fork or not self._states:
            return None
        lru = min(self._states, key=lambda s: s.last_used)
        if lru.seq.capacity < needed or self._fits(self._states + [lru]):
            return None
        self._states.remove(lru)
        lru.truncate(0)
        return lru

    def release(self, state: CachedState, tokens: list[int], prompt_len: int) -> None:
        """Put a state back after a generation; ``tokens`` are those whose KV it now holds."""
        with self._lock:
            entry = self._inflight.pop(id(state), None)
            if entry is not None:
                entry.prefilled.set()  # a waiter on a failed prefill finds ok False and prefills itself
            if self.enabled:
                self._release(state, tokens, prompt_len)

    def _release(self, state: CachedState, tokens: list[int], prompt_len: int) -> None:
        state.record(tokens, prompt_len, self.backend.batch_invariant)
        state.last_used = next(self._clock)
        self._states.append(state)
        while self._states and not self._fits(self._states):
            victim = min(self._states, key=lambda s: s.last_used)
            self._states.remove(victim)
            self.stats.evictions += 1
        self._refresh_held()

    def _fits(self, states: list[CachedState]) -> bool:
        b = self.budget
        if b.max_bytes is not None and sum(s.seq.nbytes() for s in states) > b.max_bytes:
            return False
        return b.max_tokens is None or sum(len(s.tokens) for s in states) <= b.max_tokens

    def _refresh_held(self) -> None:
        self.stats.states_held = len(self._states)
        self.stats.tokens_held = sum(len(s.tokens) for s in self._states)
        self.stats.bytes_held = sum(s.seq.nbytes() for s in self._states)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._refresh_held()
