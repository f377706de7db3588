"""The one thread that steps a batching model: every sequence's passes, many per forward pass.

Each generation runs the loop (runtime/loop.py) in its caller's thread as before, with its own
sampler, constraint, stop rules, loop detection and stream; only its forward passes come here.
``extend`` hands a pass over and waits for its logits. The scheduler thread takes the waiting
passes between steps (so sequences join and leave at any step: continuous batching) and runs
one-token passes of all sequences as one batched pass, and prompts in chunks of
:data:`PREFILL_CHUNK` tokens (one chunk per step; several, with speculative drafts, where the arena
packs them into the decode pass), so a long prompt does not stall the others' decoding.
Sampling and masks stay with each sequence's thread (llguidance computes masks without the GIL),
overlapping each other.

Before a step the scheduler waits, up to ``gather_s``, for the sequences of the last batched pass
to hand their next pass over (a batch with one missing costs that one a whole step); one that
does not come in time is not waited for again until it is back in a pass, so a caller that
stopped reading (a cancelled request, an abandoned stream) costs the others one wait. When every
slot is taken and a sequence needs one, the slot of a sequence with no pass waiting is parked
(its KV copied out; it comes back on its next pass), so abandoned generations never block others.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from slmflow.runtime.backends.slots import SlotSequence

log = logging.getLogger("slmflow")

#: Prompt tokens one step prefills for one sequence; the others decode between chunks.
PREFILL_CHUNK = 256
#: How long the scheduler's thread waits for work before checking that its model still exists.
IDLE_S = 1.0


def _drive(ref: weakref.ref) -> None:
    """The scheduler's thread: step while the scheduler exists."""
    carried: list[_Pass] = []
    while True:
        scheduler = ref()
        if scheduler is None:
            return
        carried = scheduler._serve_once(carried)
        del scheduler


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
    """Steps one arena (runtime/backends/slots.py) for every sequence of its model. Counters since
    start: ``steps``, ``decode_passes`` and ``batched_rows`` (rows over passes is the mean batch),
    ``run_s`` (in batched passes) and ``wait_s`` (gathering a batch)."""

    def __init__(self, arena, name: str, gather_s: float = 0.004) -> None:
        self.arena = arena
        self.name = name
        self.gather_s = gather_s
        self._cond = threading.Condition()
        self._waiting: list[_Pass] = []
        self._expected: list[object] = []  # the states of the last batched pass
        self._last_pass: dict[int, int] = {}  # id(state) -> the step it last decoded in
        self.steps = 0
        self.decode_passes = 0
        self.batched_rows = 0
        self.run_s = 0.0
        self.wait_s = 0.0
        self.inline_steps = 0
        self._stepping = threading.Lock()  # held by whoever runs a step: this thread or a lone caller
        self._driver_busy = False  # the thread has taken passes and is about to step them
        # The thread holds the scheduler only while it steps or waits (at most IDLE_S): once the
        # model is dropped (``unload`` and no caller holding it), the thread ends and the arena's
        # memory goes back.
        self._thread = threading.Thread(target=_drive, args=(weakref.ref(self),), name=f"scheduler-{name}",
                                        daemon=True)
        self._thread.start()

    @property
    def max_sequences(self) -> int:
        return self.arena.max_slots

    def new_sequence(self, capacity: int) -> SlotSequence:
        """A fresh sequence whose passes this scheduler runs (room up to the model's window)."""
        return SlotSequence(self, min(capacity, self.arena.context_length))

    def extend(self, state, tokens: list[int], every_position: bool):
        """Run ``tokens`` after ``state``'s and wait for the logits (of the last position, or of
        every new one)."""
        if not tokens:
            raise ValueError("a pass needs at least one token")
        job = _Pass(state, tokens, every_position)
        with self._cond:
            inline = self._alone(state, tokens) and self._stepping.acquire(blocking=False)
            if not inline:
                self._waiting.append(job)
                self._cond.notify_all()
        if inline:
            try:
                carried = self._run_taken([job])
                self.inline_steps += 1
            finally:
                self._stepping.release()
            if carried:  # it found no free slot: the thread takes it with the others
                with self._cond:
                    self._waiting.extend(carried)
                    self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.logits

    def _alone(self, state, tokens: list[int]) -> bool:
        """Whether the caller may run its pass itself (in one step) instead of handing it to the
        thread: nothing else waits or holds a slot. A lone generation then pays no two thread
        switches a token, slow to come on a 2-core machine whose cores the engine's own threads
        keep busy; a second sequence arriving sends both back through the thread, batched."""
        return (len(tokens) <= PREFILL_CHUNK and not self._waiting and not self._driver_busy
                and all(s is state for s in list(self.arena.slots)))

    def park(self, state) -> None:
        """Move ``state`` out of its slot (between steps): its generation is over."""
        with self.arena.lock:
            self.arena.park(state)
        with self._cond:
            self._expected = [s for s in self._expected if s is not state]
            self._last_pass.pop(id(state), None)

    # the scheduler thread --------------------------------------------------------------------------

    def _take(self, carried: list[_Pass]) -> list[_Pass]:
        """The passes for the next step: wait for a first one (unless passes are ``carried`` from
        the last step; none after :data:`IDLE_S`), then up to ``gather_s`` for the last pass's
        sequences to have theirs."""
        with self._cond:
            if not self._waiting and not carried:
                self._cond.wait(IDLE_S)
                if not self._waiting:
                    return []
            start = time.perf_counter()
            deadline = start + self.gather_s
            while True:
                have = {id(p.state) for p in self._waiting} | {id(p.state) for p in carried}
                if all(id(s) in have for s in self._expected) or time.perf_counter() >= deadline:
                    break
                self._cond.wait(max(deadline - time.perf_counter(), 0.0))
            taken, self._waiting = carried + self._waiting, []
            self.wait_s += time.perf_counter() - start
            self._driver_busy = True
            return taken

    def _serve_once(self, carried: list[_Pass]) -> list[_Pass]:
        """One step; returns the passes carried to the next (prompts partly prefilled, passes
        that found no slot)."""
        taken = self._take(carried)
        if not taken:
            return []
        try:
            with self._stepping:
                return self._run_taken(taken)
        finally:
            with self._cond:
                self._driver_busy = False

    def _run_taken(self, taken: list[_Pass]) -> list[_Pass]:
        """One step over ``taken``; returns the passes that go on to the next step."""
        decodes = [p for p in taken if len(p.tokens) == 1 and not p.every_position]
        prompts = [p for p in taken if p not in decodes]
        with self.arena.lock:
            busy = {id(p.state) for p in taken}
            heads = self._heads(prompts)
            newcomers = [p for p in decodes + heads if p.state.slot is None]
            self._make_room(len(newcomers), busy)
            room = self.arena.max_slots - len(self.arena.slots)
            admitted = {id(p) for p in newcomers[:room]}
            passes = [p for p in decodes if p.state.slot is not None or id(p) in admitted]
            heads = [p for p in heads if p.state.slot is not None or id(p) in admitted]
            carried = [p for p in taken if p not in passes and p not in heads]
            if passes or heads:
                self._step(passes, heads)
            carried = [p for p in heads if not p.done.is_set()] + carried
        with self._cond:
            self._expected = [p.state for p in passes] if passes else self._expected
        self.steps += 1
        return carried

    def _heads(self, prompts: list[_Pass]) -> list[_Pass]:
        """The multi-token passes (prompts, speculative drafts) this step takes: the first, and,
        where the arena packs them into one pass (``packs_prompts``), those after it while their
        tokens fit :data:`PREFILL_CHUNK`."""
        if not prompts:
            return []
        if not self.arena.packs_prompts:
            return prompts[:1]
        heads, budget = [prompts[0]], PREFILL_CHUNK - min(len(prompts[0].tokens), PREFILL_CHUNK)
        for p in prompts[1:]:
            if len(p.tokens) > budget:
                break
            heads.append(p)
            budget -= len(p.tokens)
        return heads

    def _step(self, passes: list[_Pass], heads: list[_Pass]) -> None:
        """One step: the decoding passes and the next chunk of each of ``heads``, handed to the
        arena together (it runs them as one pass or several), results handed to their callers."""
        chunks = []
        for head in heads:
            part, head.tokens = head.tokens[:PREFILL_CHUNK], head.tokens[PREFILL_CHUNK:]
            chunks.append((head.state, part, head.every_position))
        start = time.perf_counter()
        try:
            decoded, prefilled = self.arena.step([(p.state, p.tokens[0]) for p in passes], chunks)
        except BaseException as err:  # handed to each waiting caller, who raises it
            log.debug("%s: a batched pass failed: %s", self.name, err)
            for p in passes + heads:
                p.error = err
                p.done.set()
            return
        if passes:
            self.decode_passes += 1
            self.batched_rows += len(passes)
            self.run_s += time.perf_counter() - start
            for p, row in zip(passes, decoded):
                self._last_pass[id(p.state)] = self.steps
                p.logits = row
                p.done.set()
        for head, logits in zip(heads, prefilled):
            if head.every_position:
                head.rows.append(logits)
            if not head.tokens:
                if head.every_position:
                    head.logits = np.concatenate(head.rows) if isinstance(logits, np.ndarray) \
                        else _torch_cat(head.rows)
                else:
                    head.logits = logits
                head.done.set()

    def _make_room(self, needed: int, busy: set[int]) -> None:
        """Park sequences with no pass this step, least recently decoded first, until ``needed``
        slots are free (or none is idle)."""
        free = self.arena.max_slots - len(self.arena.slots)
        if needed <= free:
            return
        idle = sorted((s for s in self.arena.slots if id(s) not in busy),
                      key=lambda s: self._last_pass.get(id(s), -1))
        for state in idle[: needed - free]:
            self.arena.park(state)


def _torch_cat(rows: list) -> Any:
    import torch  # only a torch arena's rows are tensors; an onnxruntime model's process never loads torch

    return torch.cat(rows)
