"""A transformers model's passes over a slot arena (backends/slots.py): many sequences per pass.

The model's own forward runs with a cache object of ours (:class:`_SlotCache`): each attention
layer hands it the new keys and values, it writes them at each row's own position in the arena
and returns the rows' KV up to the longest; a 4-D additive mask (which transformers takes as
given) hides each row's positions past its own length, and position ids are each row's own. So
rows of different lengths decode in one pass without padding copies, as in the onnx arena.

Models whose layers attend differently (sliding windows, mixed layer types, recurrent layers) get
one mask for all layers here, which would be wrong: :func:`slot_ready` keeps them on the
one-sequence path (backends/transformers_backend.py).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch
from slmflow.runtime.backends.hf_cache import cache_keyword
from slmflow.runtime.backends.slots import SlotArena, SlotState


def slot_ready(model) -> bool:
    """Whether every layer of ``model`` is plain full attention over a KV cache."""
    config = model.config
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    window = getattr(config, "sliding_window", None)
    return layer_types == {"full_attention"} and (window is None or window >= config.max_position_embeddings)


class _SlotCache:
    """What the model's attention layers write their new KV through, for one pass."""

    def __init__(self, buffers: list[torch.Tensor], rows: torch.Tensor, starts: torch.Tensor, new: int,
                 kv_length: int) -> None:
        self._buffers = buffers
        self._rows = rows  # the arena slot of each row of the pass
        self._positions = starts[:, None] + torch.arange(new, device=starts.device)[None, :]  # [rows, new]
        self._kv_length = kv_length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self._buffers[2 * layer_idx], self._buffers[2 * layer_idx + 1]
        rows = self._rows[:, None].expand_as(self._positions)
        # [rows, heads, new, dim] -> written at [slot, :, position]
        keys[rows, :, self._positions] = key_states.transpose(1, 2).to(keys.dtype)
        values[rows, :, self._positions] = value_states.transpose(1, 2).to(values.dtype)
        lo, hi = int(self._rows[0]), int(self._rows[-1]) + 1
        return keys[lo:hi, :, : self._kv_length], values[lo:hi, :, : self._kv_length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._kv_length


class TorchSlotArena(SlotArena):
    """A transformers causal LM and its KV buffers, on the model's device and in its dtype."""

    def __init__(self, model, max_slots: int = 16, room: int = 256) -> None:
        config = model.config
        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        self.layers = int(config.num_hidden_layers)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        self.head_size = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        self.vocab_size = int(config.vocab_size)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.bytes_per_token = 2 * self.layers * self.kv_heads * self.head_size * self.dtype.itemsize
        self._cache_arg = cache_keyword(model)
        super().__init__(max_slots, room)

    def _allocate(self, slots: int, room: int) -> list[torch.Tensor]:
        return [torch.zeros((slots, self.kv_heads, room, self.head_size), dtype=self.dtype, device=self.device)
                for _ in range(2 * self.layers)]

    @staticmethod
    def _clone(array: torch.Tensor) -> torch.Tensor:
        return array.clone()

    def prefill(self, state: SlotState, token_ids: Seq[int], every_position: bool) -> torch.Tensor:
        self.activate(state)
        n = len(token_ids)
        self._ensure(len(self.slots), state.length + n)
        start = state.length
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + n, device=self.device)
        allowed = torch.arange(start + n, device=self.device)[None, :] <= positions[:, None]  # causal
        logits = self._forward(ids, positions[None, :], allowed[None, None], [state.slot],
                               torch.tensor([start], device=self.device), keep=n if every_position else 1)
        state.length += n
        return logits[0] if every_position else logits[0, -1]

    def decode(self, states: Seq[SlotState], tokens: Seq[int]) -> torch.Tensor:
        for state in states:
            self.activate(state)
        self.sit_out_full_rows(states)
        self._ensure(len(self.slots), max(s.length for s in self.slots) + 1)
        rows = len(self.slots)
        ids = torch.zeros((rows, 1), dtype=torch.long, device=self.device)
        for state, token in zip(states, tokens):
            ids[state.slot, 0] = token
        starts = torch.tensor([s.length for s in self.slots], device=self.device)
        kv_length = int(starts.max()) + 1
        allowed = torch.arange(kv_length, device=self.device)[None, :] <= starts[:, None]  # [rows, kv]
        logits = self._forward(ids, starts[:, None], allowed[:, None, None, :], list(range(rows)), starts, keep=1)
        for state in states:
            state.length += 1
        return logits[[s.slot for s in states], -1]

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, slots: list[int],
                 starts: torch.Tensor, keep: int) -> torch.Tensor:
        kv_length = allowed.shape[-1]
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        cache = _SlotCache(self._buffers, torch.tensor(slots, device=self.device), starts, ids.shape[1], kv_length)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=keep, **{self._cache_arg: cache})
        return out.logits.float()
