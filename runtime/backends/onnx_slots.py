"""onnxruntime-genai's decoder run by us, many sequences per pass: a KV arena of slots.

onnxruntime-genai's ``Generator`` steps one sequence (a batch > 1 generator takes its prompts at
once and samples by itself), so batching our loop's sequences means running its decoder
(``model.onnx``, built by its model builder) through onnxruntime directly. Its attention op,
GroupQueryAttention with a shared past/present buffer, takes every row's own length from the
attention mask and writes each row's new KV at that row's position, so rows of different lengths
decode in one pass with no padding copies. Measured on the embedded model (2-core CPU): a row's
logits in a batch of 3 equal its solo run's bit for bit, and a solo run here equals
``og.Generator``'s bit for bit.

The arena holds one buffer per layer and K/V, ``[slots, kv_heads, room, head_size]``. Sequences
being generated sit in slots ``0..n-1`` (a batch binds that range as one tensor); one that leaves
has its KV copied out to compact arrays (``park``) and the last slot moves into the hole, so the
range stays dense. Slots and room grow by doubling when needed. Every method here runs under the
arena's lock, taken by the scheduler (runtime/scheduler.py) for each step.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence as Seq
from pathlib import Path

import numpy as np
import torch

#: onnxruntime's element type names for the past KV, as numpy types.
_KV_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class SlotArena:
    """The decoder session and its KV buffers. ``prefill`` runs one sequence's new tokens (batch 1,
    bound at its slot), ``decode`` one token for each of several sequences in one pass."""

    def __init__(self, folder: Path, config: dict, max_slots: int = 16, room: int = 512) -> None:
        import onnxruntime as ort

        decoder = config["model"]["decoder"]
        self.layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_size = int(decoder["head_size"])
        self.vocab_size = int(config["model"]["vocab_size"])
        self.context_length = int(config["model"].get("context_length") or 2048)
        names = decoder["inputs"]
        self._ids_name, self._mask_name = names["input_ids"], names["attention_mask"]
        self._past = [(names["past_key_names"] % i, names["past_value_names"] % i) for i in range(self.layers)]
        outs = decoder["outputs"]
        self._logits_name = outs["logits"]
        self._present = [(outs["present_key_names"] % i, outs["present_value_names"] % i)
                         for i in range(self.layers)]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("SLMFLOW_ORT_THREADS", 0)) or (os.cpu_count() or 1)
        self.session = ort.InferenceSession(str(folder / decoder["filename"]), options,
                                            providers=["CPUExecutionProvider"])
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.kv_dtype = _KV_TYPES[inputs[self._past[0][0]]]
        self._ids_dtype = np.int32 if inputs[self._ids_name] == "tensor(int32)" else np.int64
        self._mask_dtype = np.int32 if inputs[self._mask_name] == "tensor(int32)" else np.int64
        self.max_slots = max_slots
        self.bytes_per_token = 2 * self.layers * self.kv_heads * self.head_size * np.dtype(self.kv_dtype).itemsize
        self.lock = threading.RLock()
        self.slots: list[SlotState] = []
        self._buffers = self._allocate(min(4, max_slots), min(room, self.context_length))

    def _allocate(self, slots: int, room: int) -> list[np.ndarray]:
        # np.zeros maps zero pages lazily: a large arena costs memory only where KV is written.
        return [np.zeros((slots, self.kv_heads, room, self.head_size), self.kv_dtype) for _ in range(2 * self.layers)]

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
        state.parked = [buffer[slot, :, :n].copy() for buffer in self._buffers]
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
            kept = [buffer[state.slot, :, :n].copy() for buffer in self._buffers]
        else:
            kept = [array[:, :n].copy() for array in state.parked] if state.parked is not None else None
        return SlotState(length=n, parked=kept)

    # passes --------------------------------------------------------------------------------------

    def prefill(self, state: SlotState, token_ids: Seq[int], every_position: bool) -> np.ndarray:
        """Run ``token_ids`` after ``state``'s tokens; logits of the last position, or of every
        new one (``[n, vocab]``) with ``every_position``."""
        self.activate(state)
        n = len(token_ids)
        self._ensure(len(self.slots), state.length + n)
        ids = np.asarray([token_ids], dtype=self._ids_dtype)
        logits = self._run(ids, np.asarray([state.length + n]), first_slot=state.slot, rows=1)
        state.length += n
        return logits[0] if every_position else logits[0, -1]

    def decode(self, states: Seq[SlotState], tokens: Seq[int]) -> np.ndarray:
        """One token for each of ``states`` in one pass; ``[len(states), vocab]`` logits. Active
        slots not in ``states`` run along (their rows are computed and dropped; the KV written at
        their next position is overwritten when they next decode)."""
        for state in states:
            self.activate(state)
        for idle in [s for s in self.slots if s.length >= self.context_length and all(s is not t for t in states)]:
            self.park(idle)  # a row at the full window has no next position to write while it sits out
        self._ensure(len(self.slots), max(s.length for s in self.slots) + 1)
        rows = len(self.slots)
        ids = np.zeros((rows, 1), dtype=self._ids_dtype)
        for state, token in zip(states, tokens):
            ids[state.slot, 0] = token
        lengths = np.asarray([s.length + 1 for s in self.slots])
        logits = self._run(ids, lengths, first_slot=0, rows=rows)[:, -1]
        for state in states:
            state.length += 1
        return logits[[s.slot for s in states]]

    def _run(self, ids: np.ndarray, lengths: np.ndarray, first_slot: int, rows: int) -> np.ndarray:
        """One pass of the decoder over ``rows`` slots from ``first_slot``; ``lengths``: each row's
        length after the pass (the attention mask is ones up to it: the op reads each row's own)."""
        binding = self.session.io_binding()
        # As wide as the longest row (the op reads the total length from the mask's width and
        # wants rotary tables that long), ones up to each row's own length.
        mask = (np.arange(int(lengths.max()))[None, :] < lengths[:, None]).astype(self._mask_dtype)
        binding.bind_cpu_input(self._ids_name, ids)
        binding.bind_cpu_input(self._mask_name, mask)
        for (past_k, past_v), (present_k, present_v), i in zip(self._past, self._present, range(self.layers)):
            for past, present, buffer in ((past_k, present_k, self._buffers[2 * i]),
                                          (past_v, present_v, self._buffers[2 * i + 1])):
                pointer = buffer.ctypes.data + first_slot * buffer[0].nbytes
                shape = [rows, *buffer.shape[1:]]
                binding.bind_input(past, "cpu", 0, self.kv_dtype, shape, pointer)
                binding.bind_output(present, "cpu", 0, self.kv_dtype, shape, pointer)
        logits = np.empty((rows, ids.shape[1], self.vocab_size), dtype=np.float32)
        binding.bind_output(self._logits_name, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits


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

    def __init__(self, scheduler, arena: SlotArena, capacity: int, state: SlotState | None = None) -> None:
        self._scheduler = scheduler
        self._arena = arena
        self.state = state or SlotState()
        self.capacity = capacity

    @property
    def length(self) -> int:
        return self.state.length

    def extend(self, token_ids: Seq[int]) -> torch.Tensor:
        return torch.from_numpy(self._scheduler.extend(self.state, list(token_ids), every_position=False))

    def extend_all(self, token_ids: Seq[int]) -> torch.Tensor:
        return torch.from_numpy(self._scheduler.extend(self.state, list(token_ids), every_position=True))

    def extend_on_device(self, token: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("this backend feeds tokens from the host")

    def rewind(self, length: int) -> None:
        with self._arena.lock:
            self.state.length = min(length, self.state.length)

    def fork(self) -> SlotSequence:
        with self._arena.lock:
            return SlotSequence(self._scheduler, self._arena, self.capacity, self._arena.copy(self.state))

    def park(self) -> None:
        """Free the slot after a generation (the KV is kept, compactly, for the prefix cache)."""
        self._scheduler.park(self.state)

    def nbytes(self) -> int:
        return self.state.length * self._arena.bytes_per_token
