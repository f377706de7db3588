"""A transformers model's passes over a slot arena (backends/slots.py): many sequences per pass.

A pass is *packed*: the new tokens of every sequence in it (one for a decoding sequence, a chunk
for a prompt) are laid end to end as one sequence of the model's batch of one, each with its own
position. The model's own forward runs with a cache object of ours (:class:`_PackedCache`): each
attention layer hands it the new keys and values, it writes each token's at its sequence's slot
and position, and returns every sequence's KV laid end to end; a block-diagonal causal 4-D mask
(which transformers takes as given) lets each token see its own sequence's earlier tokens only.
So prompts and decoding sequences share one pass (the weights are read once for all of them),
and nobody waits for a prompt.

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


class _PackedCache:
    """What the model's attention layers write their new KV through, for one packed pass:
    ``slots``/``positions`` say where each new token's KV goes, ``key_slots``/``key_positions``
    which arena rows make up the keys the pass attends to."""

    def __init__(self, buffers: list[torch.Tensor], slots: torch.Tensor, positions: torch.Tensor,
                 key_slots: torch.Tensor, key_positions: torch.Tensor) -> None:
        self._buffers = buffers
        self._slots, self._positions = slots, positions
        self._key_slots, self._key_positions = key_slots, key_positions

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self._buffers[2 * layer_idx], self._buffers[2 * layer_idx + 1]
        # [1, heads, tokens, dim] -> each token's [heads, dim] at its slot and position
        keys[self._slots, :, self._positions] = key_states[0].transpose(0, 1).to(keys.dtype)
        values[self._slots, :, self._positions] = value_states[0].transpose(0, 1).to(values.dtype)
        gathered_keys = keys[self._key_slots, :, self._key_positions].transpose(0, 1)[None]
        gathered_values = values[self._key_slots, :, self._key_positions].transpose(0, 1)[None]
        return gathered_keys, gathered_values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self._key_positions.numel())


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

    packs_prompts = True

    def prefill(self, state: SlotState, token_ids: Seq[int], every_position: bool) -> torch.Tensor:
        return self.step([], [(state, list(token_ids), every_position)])[1][0]

    def decode(self, states: Seq[SlotState], tokens: Seq[int]) -> torch.Tensor:
        return self.step(list(zip(states, tokens)), [])[0]

    def step(self, decodes: Seq[tuple[SlotState, int]], chunks: Seq[tuple[SlotState, list[int], bool]]):
        """One packed pass: a token for each decoding sequence and each chunk's tokens. Returns the
        decoding sequences' logits (``[n, vocab]``, or None without any) and a list of each
        chunk's (of its last position, or of every one)."""
        rows = [(state, [token]) for state, token in decodes] + [(state, list(new)) for state, new, _ in chunks]
        for state, _ in rows:
            self.activate(state)
        self._ensure(len(self.slots), max(state.length + len(new) for state, new in rows))
        ids, slots, positions, key_slots, key_positions, query_rows, key_rows, ends = [], [], [], [], [], [], [], []
        for r, (state, new) in enumerate(rows):
            start, n = state.length, len(new)
            ids += new
            slots += [state.slot] * n
            positions += range(start, start + n)
            query_rows += [r] * n
            key_slots += [state.slot] * (start + n)
            key_positions += range(start + n)
            key_rows += [r] * (start + n)
            ends.append(len(ids))
        device = self.device
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
        positions_t, key_positions_t = as_tensor(positions), as_tensor(key_positions)
        allowed = (as_tensor(query_rows)[:, None] == as_tensor(key_rows)[None, :]) & \
            (key_positions_t[None, :] <= positions_t[:, None])
        n = len(decodes)
        keep = [end - 1 for end in ends[:n]]
        spans = []  # where each chunk's kept logits sit among the kept rows
        for i, (_, _, every_position) in enumerate(chunks):
            first, end = (ends[n + i - 1] if n + i else 0), ends[n + i]
            wanted = list(range(first, end)) if every_position else [end - 1]
            spans.append((len(keep), len(keep) + len(wanted), every_position))
            keep += wanted
        cache = _PackedCache(self._buffers, as_tensor(slots), positions_t, as_tensor(key_slots), key_positions_t)
        logits = self._forward(as_tensor([ids]), positions_t[None], allowed[None, None], cache, as_tensor(keep))
        for state, new in rows:
            state.length += len(new)
        return (logits[:n] if n else None), [logits[a:b] if every else logits[a] for a, b, every in spans]

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, cache: _PackedCache,
                 keep: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=keep, **{self._cache_arg: cache})
        return out.logits[0].float()
