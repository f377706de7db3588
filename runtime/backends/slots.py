"""A KV arena of slots: what lets many sequences share one forward pass.

An arena holds one buffer per layer and K/V, ``[slots, kv_heads, room, head_size]``. Sequences
being generated sit in slots ``0..n-1``, so a batched pass binds that range as one tensor; one that
leaves has its KV copied out to compact arrays (``park``) and the last slot moves into the hole,
so the range stays dense. Slots and room grow by doubling when needed. A parked state is what the
prefix cache keeps; forking one is a copy of its rows. Every method runs under the arena's lock,
taken by the scheduler (runtime/scheduler.py) for each step.

Subclasses run the passes: backends/onnx_slots.py (onnxruntime-genai's decoder, numpy buffers)
and backends/torch_slots.py (a transformers model, torch buffers).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from slmflow.runtime.backends.base import Logits


class SlotArena:
    """Slot bookkeeping over ``self._buffers``; subclasses set the shapes and implement
    ``_allocate``, ``_clone``, ``prefill`` and ``decode``."""

    layers: int
    kv_heads: int
    head_size: int
    vocab_size: int
    context_length: int
    bytes_per_token: int

    def __init__(self, max_slots: int, room: int) -> None:
        self.max_slots = max_slots
        self.lock = threading.RLock()
        self.slots: list[SlotState] = []
        self._buffers = self._allocate(min(4, max_slots), min(room, self.context_length))

    def _allocate(self, slots: int, room: int) -> list[Any]:
        raise NotImplementedError

    @staticmethod
    def _clone(array: Any) -> Any:
        raise NotImplementedError

    def prefill(self, state: SlotState, token_ids: Seq[int], every_position: bool) -> np.ndarray:
        """Run ``token_ids`` after ``state``'s tokens; logits of the last position, or of every
        new one (``[n, vocab]``) with ``every_position``."""
        raise NotImplementedError

    def decode(self, states: Seq[SlotState], tokens: Seq[int]) -> np.ndarray:
        """One token for each of ``states`` in one pass; ``[len(states), vocab]`` logits."""
        raise NotImplementedError

    @property
    def room(self) -> int:
        return self._buffers[0].shape[2]

    def _grow(self, slots: int, room: int) -> None:
        """Larger buffers holding what the old ones held (rows of active slots, up to their length)."""
        have_slots, have_room = self._buffers[0].shape[0], self.room
        slots, room = max(slots, have_slots), max(room, have_room)
        if (slots, room) == (have_slots, have_room):
            return
        fresh = self._allocate(slots, room)
        for new, old in zip(fresh, self._buffers):
            for state in self.slots:
                new[state.slot, :, : state.length] = old[state.slot, :, : state.length]
        self._buffers = fresh

    def _ensure(self, slots: int, length: int) -> None:
        """Room for ``slots`` active slots and a row of ``length`` tokens (one spare position: a row
        that sits out a pass still has its next position written; a row at the full window has
        none, and sits out no pass, as it cannot decode further)."""
        want_slots = self._buffers[0].shape[0]
        while want_slots < slots:
            want_slots *= 2
        want_room = self.room
        while want_room < length + 1:
            want_room *= 2
        self._grow(min(want_slots, self.max_slots), min(want_room, self.context_length))

    # slot bookkeeping ------------------------------------------------------------------------------

    def activate(self, state: SlotState) -> None:
        """Give ``state`` a slot (copying its parked KV in), if it has none."""
        if state.slot is not None:
            return
        if len(self.slots) >= self.max_slots:
            raise RuntimeError(f"all {self.max_slots} slots are in use")  # the scheduler admits at most that many
        self._ensure(len(self.slots) + 1, state.length)
        state.slot = len(self.slots)
        self.slots.append(state)
        if state.parked is not None:
            for buffer, kept in zip(self._buffers, state.parked):
                buffer[state.slot, :, : state.length] = kept[:, : state.length]
            state.parked = None

    def park(self, state: SlotState) -> None:
        """Copy ``state``'s KV out of its slot and free the slot, keeping slots ``0..n-1`` dense."""
        if state.slot is None:
            return
        slot, n = state.slot, state.length
        state.parked = [self._clone(buffer[slot, :, :n]) for buffer in self._buffers]
        last = self.slots.pop()
        if last is not state:
            for buffer in self._buffers:
                buffer[slot, :, : last.length] = buffer[last.slot, :, : last.length]
            last.slot = slot
            self.slots[slot] = last
        state.slot = None

    def copy(self, state: SlotState) -> SlotState:
        """A parked copy of ``state``'s first ``state.length`` tokens."""
        n = state.length
        if state.slot is not None:
            kept = [self._clone(buffer[state.slot, :, :n]) for buffer in self._buffers]
        else:
            kept = [self._clone(array[:, :n]) for array in state.parked] if state.parked is not None else None
        return SlotState(length=n, parked=kept)

    #: Whether ``step`` runs several prompt chunks and the decode rows as one pass.
    packs_prompts = False

    def step(self, decodes: Seq[tuple[SlotState, int]], chunks: Seq[tuple[SlotState, list[int], bool]]):
        """One scheduler step: a token for each of ``decodes`` and, for each of ``chunks`` (state,
        tokens, every_position), a prompt's next tokens. Returns (the decodes' logits or None, a
        list of each chunk's). Here one pass for the decodes and one per chunk, as the decoder
        takes them; an arena that packs them all into one pass (backends/torch_slots.py)
        overrides it."""
        decoded = self.decode([s for s, _ in decodes], [t for _, t in decodes]) if decodes else None
        return decoded, [self.prefill(*chunk) for chunk in chunks]


class SlotState:
    """One sequence's place in the arena: its length, and its slot or its parked KV."""

    def __init__(self, length: int = 0, parked: list[np.ndarray] | None = None) -> None:
        self.length = length
        self.slot: int | None = None
        self.parked = parked


class SlotSequence:
    """The loop's :class:`~slmflow.runtime.backends.base.Sequence` over an arena slot: passes go
    through the model's scheduler, which batches them with other sequences' passes."""

    feeds_on_device = False

    def __init__(self, scheduler, capacity: int, state: SlotState | None = None) -> None:
        self._scheduler = scheduler
        self._arena: SlotArena = scheduler.arena
        self.state = state or SlotState()
        self.capacity = capacity

    @property
    def length(self) -> int:
        return self.state.length

    # Logits come back as the arena computes them: numpy from onnxruntime, torch from transformers.
    def extend(self, token_ids: Seq[int]) -> Logits:
        return self._scheduler.extend(self.state, list(token_ids), every_position=False)

    def extend_all(self, token_ids: Seq[int]) -> Logits:
        return self._scheduler.extend(self.state, list(token_ids), every_position=True)

    def extend_on_device(self, token: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("this backend feeds tokens from the host")

    def rewind(self, length: int) -> None:
        with self._arena.lock:
            self.state.length = min(length, self.state.length)

    def fork(self) -> SlotSequence:
        with self._arena.lock:
            return SlotSequence(self._scheduler, self.capacity, self._arena.copy(self.state))

    def park(self) -> None:
        """Free the slot after a generation (the KV is kept, compactly, for the prefix cache)."""
        self._scheduler.park(self.state)

    def nbytes(self) -> int:
        return self.state.length * self._arena.bytes_per_token

