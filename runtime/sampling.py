"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p and penalties.

Written once for every backend, over torch tensors so that the same code runs on the device that
produced the logits. Filters apply in the order Hugging Face uses (temperature, top-k, top-p,
min-p), so a user moving from ``model.generate`` gets the distribution they expect.

Greedy decoding without penalties (the default) of host logits in a numpy array (the ONNX
backends) is one ``argmax`` and needs no torch: torch is imported where it is used, so such a
process never loads libtorch (~190 MB resident, over a third of the embedded model's process).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from slmflow.runtime.sampling_params import SamplingParams, Seed

if TYPE_CHECKING:
    import torch

__all__ = ["SamplingParams", "Seed", "Sampler", "filtered_probs", "filtered_scores", "gumbel_max"]


def filtered_scores(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The tempered logits with ``-inf`` outside the tokens the filters keep; their softmax is the
    distribution sampling draws from. Staying in logit space lets the sampler skip the softmax and
    the renormalisation (see :meth:`Sampler.pick`)."""
    import torch

    scores = logits.float() / max(params.temperature, 1e-5)
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        nucleus = _nucleus_from_top_k(scores, params.top_p) if scores.device.type == "cpu" else None
        scores = nucleus if nucleus is not None else _nucleus_by_sorting(scores, params.top_p)
    if params.min_p > 0.0:
        # p_i < min_p * p_max  <=>  s_i < s_max + log(min_p): the softmax's normaliser cancels.
        scores = scores.masked_fill(scores < scores.max() + math.log(params.min_p), float("-inf"))
    return scores


def _nucleus_by_sorting(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p over the whole vocabulary, with no host read (the GPU path)."""
    import torch

    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    # Drop the low tail whose mass is <= 1 - top_p; the most likely token always survives.
    drop_sorted = cumulative <= (1.0 - top_p)
    drop_sorted[-1:].fill_(False)  # in place on the device: no host-to-device copy
    return scores.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))


NUCLEUS_CANDIDATES = (256, 4096)


def _nucleus_from_top_k(scores: torch.Tensor, top_p: float) -> torch.Tensor | None:
    """Top-p from the most likely few hundred (then few thousand) tokens when they already hold
    ``top_p`` of the mass; None when they do not. On a CPU, sorting a 49k vocabulary costs ~4 ms a
    token, as much as half a decode step of a small model, while top-256 and a log-sum-exp cost
    ~0.25 ms; the host read that decides is free there."""
    import torch

    log_total = torch.logsumexp(scores, -1)
    for k in NUCLEUS_CANDIDATES:
        if k >= scores.shape[-1]:
            return None
        top = torch.topk(scores, k)
        probs = (top.values - log_total).exp()
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        if float(before[-1] + probs[-1]) >= top_p:
            keep = before < top_p  # the smallest set reaching top_p; the most likely token always
            nucleus = torch.full_like(scores, float("-inf"))
            nucleus[top.indices[keep]] = top.values[keep]
            return nucleus
    return None


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution sampling draws from: softmax of the tempered, filtered logits (zeros outside)."""
    return filtered_scores(logits, params).softmax(-1)


def gumbel_max(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A draw from softmax(scores) as argmax(scores + Gumbel noise): exact, and on a GPU a few
    elementwise kernels and one argmax instead of a softmax plus ``multinomial``'s normalisation,
    checks and search (bench/sampler_speed.py measures both).

    The noise is -log(-log(U)) with U uniform in [0, 1): U = 0 gives -inf noise, so a token can
    only lose by it, never be picked against its probability, and ``-inf`` scores stay ``-inf``."""
    import torch

    uniform = torch.rand(scores.shape, device=scores.device, generator=generator)
    return torch.argmax(scores - torch.log(-torch.log(uniform)))


class PendingToken:
    """A token chosen on the device whose copy to the host is under way.

    ``on_device`` can be fed to the next forward pass at once; ``wait`` blocks only until the
    sampling kernels are done, not for work queued after them (the next forward pass)."""

    def __init__(self, on_device, host: torch.Tensor | None) -> None:
        self.on_device = on_device
        self._host = host
        self._ready = None
        if host is not None:
            import torch

            host.copy_(on_device, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()

    def wait(self) -> int:
        if self._ready is None:
            return int(self.on_device)
        self._ready.synchronize()
        return int(self._host)


class Sampler:
    """Per-generation sampler state: the RNG and the token counts the penalties need.

    Everything stays on the logits' device with no host synchronisation (no boolean indexing, no
    ``.item()``), so on a GPU the choice of token t can be queued ahead of the forward pass of t+1."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: list[int], device) -> None:
        self.params = params
        self._rng = None
        self._counts = None
        self._seen = None
        self._host = None
        #: Greedy without penalties: numpy logits need only their argmax (no torch at all).
        self._plain_greedy = params.greedy and not params.penalised
        if self._plain_greedy and str(device) == "cpu":
            return
        import torch

        if not params.greedy:
            self._rng = torch.Generator(device=device)
            self._rng.manual_seed(params.seed if params.seed is not None else torch.seed())
        if torch.device(device).type == "cuda":
            self._host = torch.zeros((), dtype=torch.long, pin_memory=True)
        if params.penalised:
            self._counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            self._seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            if prompt_ids:
                self._seen[torch.tensor(prompt_ids, device=device)] = True

    def _penalise(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        p = self.params
        logits = logits.float()
        if p.repetition_penalty != 1.0:
            seen = self._seen[: logits.shape[-1]]
            penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(seen, penalised, logits)
        counts = self._counts[: logits.shape[-1]]
        if p.frequency_penalty:
            logits = logits - p.frequency_penalty * counts
        if p.presence_penalty:
            logits = logits - p.presence_penalty * (counts > 0).float()
        return logits

    def pick(self, logits) -> PendingToken:
        """Choose the next token from last-position logits (1-D, vocab-sized; a torch tensor, or
        a numpy array from a host backend), without waiting for it."""
        if isinstance(logits, np.ndarray) and self._plain_greedy:
            return PendingToken(int(np.argmax(logits)), None)
        import torch

        if isinstance(logits, np.ndarray):
            logits = torch.from_numpy(logits)

        if self._counts is not None:
            logits = self._penalise(logits)
        if self.params.greedy:
            token = torch.argmax(logits)
        else:
            token = gumbel_max(filtered_scores(logits, self.params), self._rng)
        if self._counts is not None:
            self._counts.index_add_(0, token.view(1), torch.ones(1, device=token.device))
            self._seen.index_fill_(0, token.view(1), True)
        return PendingToken(token, self._host)
