"""onnxruntime-genai's decoder run by us, many sequences per pass, over a slot arena (backends/slots.py).

onnxruntime-genai's ``Generator`` steps one sequence (a batch > 1 generator takes its prompts at
once and samples by itself), so batching our loop's sequences means running its decoder
(``model.onnx``, built by its model builder) through onnxruntime directly. Its attention op,
GroupQueryAttention with a shared past/present buffer, takes every row's own length from the
attention mask and writes each row's new KV at that row's position, so rows of different lengths
decode in one pass with no padding copies. Measured on the embedded model (2-core CPU): a row's
logits in a batch of 3 equal its solo run's bit for bit, and a solo run here equals
``og.Generator``'s bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence as Seq
from pathlib import Path

import numpy as np
from slmflow.runtime.backends.slots import SlotArena, SlotState

#: onnxruntime's element type names for the past KV, as numpy types.
_KV_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxSlotArena(SlotArena):
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
        self.bytes_per_token = 2 * self.layers * self.kv_heads * self.head_size * np.dtype(self.kv_dtype).itemsize
        super().__init__(max_slots, room)

    def _allocate(self, slots: int, room: int) -> list[np.ndarray]:
        # np.zeros maps zero pages lazily: a large arena costs memory only where KV is written.
        return [np.zeros((slots, self.kv_heads, room, self.head_size), self.kv_dtype) for _ in range(2 * self.layers)]

    @staticmethod
    def _clone(array: np.ndarray) -> np.ndarray:
        return array.copy()

    def prefill(self, state: SlotState, token_ids: Seq[int], every_position: bool) -> np.ndarray:
        self.activate(state)
        n = len(token_ids)
        self._ensure(len(self.slots), state.length + n)
        ids = np.asarray([token_ids], dtype=self._ids_dtype)
        logits = self._run(ids, np.asarray([state.length + n]), first_slot=state.slot, rows=1)
        state.length += n
        return logits[0] if every_position else logits[0, -1]

    def decode(self, states: Seq[SlotState], tokens: Seq[int]) -> np.ndarray:
        """The pass binds slots ``0..n-1`` as one tensor, so active slots not in ``states`` run
        along: their rows are computed and dropped, and the KV written at their next position is
        overwritten when they next decode."""
        for state in states:
            self.activate(state)
        self._sit_out_full_rows(states)
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

    def _sit_out_full_rows(self, states: Seq[SlotState]) -> None:
        """Park active rows at the full window that are not in this pass: a row sitting out still
        has its next position written, and such a row has none (it cannot decode further)."""
        for idle in [s for s in self.slots if s.length >= self.context_length and all(s is not t for t in states)]:
            self.park(idle)

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


