"""The one thread that steps a batching model: every sequence's passes, many per forward pass.

Each generation runs the loop (runtime/loop.py) in its caller's thread as before, with its own
sampler, constraint, stop rules, loop detection and stream; only its forward passes come here.
``extend`` hands a pass over and waits for its logits. The scheduler thread takes the waiting
passes between steps (so sequences join and leave at any step: continuous batching) and runs
one-token passes of all sequences as one batched pass, and prompts in chunks of
:data:`PREFILL_CHUNK` tokens, one chunk per step, so a long prompt does not stall the others'
decoding. Sampling and masks stay with each sequence's thread (llguidance computes masks
without the GIL), overlapping each other.

Before a step the scheduler waits, up to ``gather_s``, for every sequence that is mid-generation
(:meth:`running`) to hand its next pass over: a batch with one sequence missing costs that
sequence a whole step. A sequence whose caller stops (a cancelled request, a stop string) just
hands nothing more; leaving its ``running`` block frees its slot for the next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("slmflow")

#: Prompt tokens one step prefills for one sequence; the others decode between chunks.
PREFILL_CHUNK = 256


@dataclass(eq=False)
class _Pass:
    state: object
    tokens: list[int]
    every_position: bool
    done: threading.Event = field(default_factory=threading.Event)
    logits: np.ndarray | None = None
    rows: list[np.ndarray] = field(default_factory=list)
    error: BaseException | None = None


class BatchScheduler:
    """Steps one arena (runtime/backends/onnx_slots.py) for every sequence of its model."""

    def __init__(self, arena, name: str, gather_s: float = 0.004) -> None:
        self.arena = arena
        self.name = name
        self.gather_s = gather_s
        self._cond = threading.Condition()
        self._waiting: list[_Pass] = []
        self._running = 0
        self.steps = 0
        self.batched_rows = 0
        self.decode_passes = 0
        self.wait_s = 0.0
        self.run_s = 0.0
        self._thread = threading.Thread(target=self._serve, name=f"scheduler-{name}", daemon=True)
        self._thread.start()

    @property
    def max_sequences(self) -> int:
        return self.arena.max_slots

    @contextmanager
    def running(self) -> Iterator[None]:
        """Mark one generation as under way, so steps wait for its passes."""
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def extend(self, state, tokens: list[int], every_position: bool) -> np.ndarray:
        """Run ``tokens`` after ``state``'s and wait for the logits (of the last position, or of
        every new one)."""
        if not tokens:
            raise ValueError("a pass needs at least one token")
        job = _Pass(state, tokens, every_position)
        with self._cond:
            self._waiting.append(job)
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.logits

    def park(self, state) -> None:
        """Move ``state`` out of its slot (between steps)."""
        with self.arena.lock:
            self.arena.park(state)

    # the scheduler thread --------------------------------------------------------------------------

    def _take(self, carried: int) -> list[_Pass]:
        """The passes for the next step: wait for a first one (unless ``carried`` passes are left
        from the last step), then up to ``gather_s`` for every running generation to have one."""
        with self._cond:
            while not self._waiting and not carried:
                self._cond.wait()
            t0 = time.perf_counter()
            deadline = time.perf_counter() + self.gather_s
            while len(self._waiting) + carried < self._running:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken, self._waiting = self._waiting, []
            self.wait_s += time.perf_counter() - t0
            return taken

    def _serve(self) -> None:
        carried: list[_Pass] = []  # prompts partly prefilled, continued next step
        while True:
            taken = carried + self._take(len(carried))
            decodes = [p for p in taken if len(p.tokens) == 1 and not p.every_position]
            prompts = [p for p in taken if p not in decodes]
            with self.arena.lock:
                # at most max_slots sequences in a pass; the rest wait for the next step
                room = max(self.arena.max_slots - len(self.arena.slots), 0)
                fits = [p for p in decodes if p.state.slot is not None]
                newcomers = [p for p in decodes if p.state.slot is None]
                fits += newcomers[:room]
                later = newcomers[room:]
                if fits:
                    self._run(fits, lambda: self.arena.decode([p.state for p in fits], [p.tokens[0] for p in fits]))
                carried = later
                if prompts:
                    head, rest = prompts[0], prompts[1:]
                    if head.state.slot is None and len(self.arena.slots) >= self.arena.max_slots:
                        carried += prompts
                    else:
                        self._chunk(head)
                        carried += ([head] if not head.done.is_set() else []) + rest
            self.steps += 1

    def _run(self, passes: list[_Pass], step) -> None:
        t0 = time.perf_counter()
        try:
            logits = step()
            self.decode_passes += 1
            self.run_s += time.perf_counter() - t0
        except BaseException as err:  # handed to each waiting caller, who raises it
            log.debug("%s: a batched pass failed: %s", self.name, err)
            for p in passes:
                p.error = err
                p.done.set()
            return
        self.batched_rows += len(passes)
        for p, row in zip(passes, logits):
            p.logits = row
            p.done.set()

    def _chunk(self, job: _Pass) -> None:
        """Prefill the next chunk of ``job``'s tokens; finish it when none are left."""
        part, job.tokens = job.tokens[:PREFILL_CHUNK], job.tokens[PREFILL_CHUNK:]
        try:
            rows = self.arena.prefill(job.state, part, job.every_position)
        except BaseException as err:
            job.error = err
            job.done.set()
            return
        if job.every_position:
            job.rows.append(rows)
        if not job.tokens:
            job.logits = np.concatenate(job.rows) if job.every_position else rows
            job.done.set()
