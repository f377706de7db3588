"""llama.cpp under our loop: a GGUF file run by llama-cpp-python's low-level API (issue #32).

llama.cpp runs the forward pass on its own quantized kernels (the GGUF's Q4_1 as it is, no
conversion); everything else is ours as on every backend: sampling, llguidance masks and
jump-forward, stop strings, the prefix cache, and batching (runtime/scheduler.py). The context
holds up to ``max_slots`` sequences in one unified KV cache; a sequence's slot is its llama.cpp
sequence id, so a scheduler step is one ``llama_decode`` over every sequence's new tokens (each
token tagged with its sequence and position), and a parked sequence's KV is saved out with
``llama_state_seq_get_data`` and loaded back into whichever slot it gets next.

Measured on the embedded model (bench/cpu_engines.py): llama.cpp decodes slower here than our
loop on the int4 ONNX conversion, so the embedded default stays ONNX; this backend is for the
GGUF files people already have. llama-cpp-python compiles llama.cpp at install, so it is an
optional extra (``pip install llama-cpp-python``).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence as Seq
from pathlib import Path

import numpy as np
from slmflow.runtime.backends.slots import SlotArena, SlotState
from slmflow.runtime.errors import BackendUnavailableError, ModelLoadError
from slmflow.runtime.specs import ModelSpec
from slmflow.runtime.tokenizer import ChatTokenizer

INSTALL_HINT = "install it with: pip install llama-cpp-python (it compiles llama.cpp, a few minutes)"
#: Most tokens one ``llama_decode`` takes (the scheduler sends prompts in chunks of 256).
BATCH_TOKENS = 512


def _llama_cpp():
    try:
        import llama_cpp
        import llama_cpp._logger as llama_logger
    except ImportError as err:
        raise BackendUnavailableError("the llama.cpp backend needs llama-cpp-python", INSTALL_HINT) from err
    llama_logger.set_verbose(False)  # llama.cpp logs every tensor it loads to stderr otherwise
    return llama_cpp


def model_params(lc):
    """llama.cpp's default model parameters, less weight repacking on a CPU with AMX: there
    ggml repacks Q4/Q8 weights into its AMX buffer type, and the first ``llama_decode`` of the
    embedded Q4_1 model then segfaults inside ``ggml_backend_amx_mul_mat`` (llama-cpp-python
    0.3.36 built here; llama.cpp issue #20824). Elsewhere repacking stays on: it is faster."""
    params = lc.llama_model_default_params()
    if b"AMX_INT8 = 1" in lc.llama_print_system_info():
        params.use_extra_bufts = False
    return params


def load_gguf(lc, path: Path):
    """A GGUF file as llama-cpp-python's model object, with :func:`model_params`."""
    from llama_cpp import _internals

    try:
        return _internals.LlamaModel(path_model=str(path), params=model_params(lc), verbose=False)
    except (ValueError, RuntimeError) as err:
        raise ModelLoadError(f"llama.cpp cannot load {path}: {err}",
                             "check that the file is a complete GGUF model") from err


class LlamaCppArena(SlotArena):
    """One llama.cpp context whose sequence ids are the arena's slots. KV lives in llama.cpp, so
    the buffer bookkeeping of the base class is replaced: a slot moves with ``seq_cp``, a parked
    sequence is llama.cpp's serialized state of that sequence."""

    packs_prompts = True  # one llama_decode takes every sequence's tokens, prompts and decodes alike

    def __init__(self, path: Path, context_length: int, max_slots: int = 8) -> None:
        """``context_length`` is the KV cache's size in tokens, shared by the active sequences
        (llama.cpp allocates and clears it at once: 8192 tokens of the embedded model's f16 KV
        are ~190 MB)."""
        lc = _llama_cpp()
        from llama_cpp import _internals

        self._lc = lc
        self._model = load_gguf(lc, path)
        trained = lc.llama_model_n_ctx_train(self._model.model)
        self.context_length = min(context_length, trained) if trained > 0 else context_length
        params = lc.llama_context_default_params()
        params.n_ctx = self.context_length
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = max_slots
        params.kv_unified = True  # sequences share cells: copying a slot copies no KV
        # Flash attention off (llama.cpp's auto turns it on for a CPU): on the 2-core machine here
        # bench/cpu_engines.py measured llama.cpp at 104.5 tok/s with it and 147-171 without, in
        # separate runs; SLMFLOW_LLAMA_FLASH_ATTN=1 turns it on.
        flash = os.environ.get("SLMFLOW_LLAMA_FLASH_ATTN") == "1"
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        threads = int(os.environ.get("SLMFLOW_LLAMA_THREADS", 0)) or (os.cpu_count() or 1)
        params.n_threads = params.n_threads_batch = threads
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._memory = lc.llama_get_memory(self._ctx.ctx)
        self._vocab = lc.llama_model_get_vocab(self._model.model)
        self.vocab_size = lc.llama_vocab_n_tokens(self._vocab)
        model = self._model.model
        head_size = lc.llama_model_n_embd(model) // lc.llama_model_n_head(model)
        # K and V, f16 (llama.cpp's default cache type), every layer's KV heads
        self.bytes_per_token = 2 * lc.llama_model_n_layer(model) * lc.llama_model_n_head_kv(model) * head_size * 2
        self._batch = lc.llama_batch_init(BATCH_TOKENS, 0, 1)
        super().__init__(max_slots, self.context_length)

    def _allocate(self, slots: int, room: int) -> list:
        return []  # no buffers of ours: the KV is llama.cpp's

    def __del__(self) -> None:
        batch = getattr(self, "_batch", None)
        if batch is not None:
            self._lc.llama_batch_free(batch)
            self._batch = None

    @property
    def room(self) -> int:
        return self.context_length

    # slot bookkeeping: llama.cpp holds the KV -------------------------------------------------------

    def activate(self, state: SlotState) -> None:
        if state.slot is not None:
            return
        if len(self.slots) >= self.max_slots:
            raise RuntimeError(f"all {self.max_slots} slots are in use")  # the scheduler admits at most that many
        state.slot = len(self.slots)
        self.slots.append(state)
        self._lc.llama_memory_seq_rm(self._memory, state.slot, -1, -1)
        if state.parked is not None:
            blob = state.parked
            if self._lc.llama_state_seq_set_data(self._ctx.ctx, blob, len(blob), state.slot) == 0:
                raise RuntimeError("llama.cpp could not restore a parked sequence")
            state.parked = None

    def park(self, state: SlotState) -> None:
        if state.slot is None:
            return
        state.parked = self._saved(state)
        slot = state.slot
        self._lc.llama_memory_seq_rm(self._memory, slot, -1, -1)
        last = self.slots.pop()
        if last is not state:
            self._lc.llama_memory_seq_cp(self._memory, last.slot, slot, -1, -1)
            self._lc.llama_memory_seq_rm(self._memory, last.slot, -1, -1)
            last.slot = slot
            self.slots[slot] = last
        state.slot = None

    def copy(self, state: SlotState) -> SlotState:
        kept = self._saved(state) if state.slot is not None else state.parked
        return SlotState(length=state.length, parked=kept)

    def _saved(self, state: SlotState):
        """The slot's first ``state.length`` tokens of KV, serialized by llama.cpp."""
        self._trim(state)
        size = self._lc.llama_state_seq_get_size(self._ctx.ctx, state.slot)
        blob = (ctypes.c_uint8 * size)()
        self._lc.llama_state_seq_get_data(self._ctx.ctx, blob, size, state.slot)
        return blob

    def _trim(self, state: SlotState) -> None:
        """Drop KV past the state's length (a rewind only shortens ``length``)."""
        self._lc.llama_memory_seq_rm(self._memory, state.slot, state.length, -1)

    # passes ---------------------------------------------------------------------------------------

    def prefill(self, state: SlotState, token_ids: Seq[int], every_position: bool) -> np.ndarray:
        _, (logits,) = self.step([], [(state, list(token_ids), every_position)])
        return logits

    def decode(self, states: Seq[SlotState], tokens: Seq[int]) -> np.ndarray:
        decoded, _ = self.step(list(zip(states, tokens)), [])
        return decoded

    def step(self, decodes: Seq[tuple[SlotState, int]], chunks: Seq[tuple[SlotState, list[int], bool]]):
        """Every decode row and prompt chunk in as few ``llama_decode`` calls as BATCH_TOKENS
        allows (one, for the scheduler's 256-token chunks and up to 256 decoding sequences)."""
        rows: list[tuple[SlotState, list[int], bool]] = [(s, [t], False) for s, t in decodes] + list(chunks)
        for state, tokens, _ in rows:
            self.activate(state)
            self._trim(state)
            if state.length + len(tokens) > self.context_length:
                raise RuntimeError(f"a sequence would pass the {self.context_length}-token window")
        outputs: list[list[np.ndarray]] = [[] for _ in rows]
        queue = [(r, i) for r, (_, tokens, _) in enumerate(rows) for i in range(len(tokens))]
        while queue:
            part, queue = queue[:BATCH_TOKENS], queue[BATCH_TOKENS:]
            # (row, token index, whether its logits are wanted): every position, or a row's last
            pending = [(r, i, rows[r][2] or i == len(rows[r][1]) - 1) for r, i in part]
            self._run(rows, pending)
            for j, (r, _, wants) in enumerate(pending):
                if wants:
                    outputs[r].append(self._logits(j))
        for state, tokens, _ in rows:
            state.length += len(tokens)
        decoded = np.stack([out[-1] for out in outputs[: len(decodes)]]) if decodes else None
        chunk_logits = [np.stack(out) if every else out[-1]
                        for out, (_, _, every) in zip(outputs[len(decodes):], chunks)]
        return decoded, chunk_logits

    def _run(self, rows, pending: list[tuple[int, int, bool]]) -> None:
        batch = self._batch
        batch.n_tokens = len(pending)
        for j, (r, i, wants) in enumerate(pending):
            state, tokens, _ = rows[r]
            batch.token[j] = tokens[i]
            batch.pos[j] = state.length + i
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = state.slot
            batch.logits[j] = wants
        if self._lc.llama_decode(self._ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed (the KV cache is full?)")

    def _logits(self, j: int) -> np.ndarray:
        """The logits of the last pass's j-th token, copied out of llama.cpp's buffer."""
        pointer = self._lc.llama_get_logits_ith(self._ctx.ctx, j)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy()


class LlamaCppBackend:
    """A GGUF model on llama.cpp; every sequence's passes batched by the model's scheduler."""

    name = "llama.cpp"
    # llama.cpp's CPU matmul takes other kernels for a batch than for one row: reuse only prefilled KV.
    batch_invariant = False
    can_fork = True
    device = "cpu"

    def __init__(self, spec: ModelSpec, arena: LlamaCppArena, tokenizer: ChatTokenizer) -> None:
        from slmflow.runtime.scheduler import BatchScheduler

        self.spec = spec
        self.tokenizer = tokenizer
        self.context_length = arena.context_length
        self.vocab_size = arena.vocab_size
        self.scheduler = BatchScheduler(arena, str(spec))

    @classmethod
    def load(cls, spec: ModelSpec, gguf: Path, tokenizer_folder: Path | None = None,
             context_length: int = 4096) -> LlamaCppBackend:
        """``tokenizer_folder``: a folder with the same model's tokenizer.json (faster than reading
        the tokenizer out of the GGUF, which transformers does otherwise)."""
        arena = LlamaCppArena(gguf, context_length)
        if tokenizer_folder is not None:
            tokenizer = ChatTokenizer.from_folder(tokenizer_folder)
        else:
            tokenizer = ChatTokenizer.from_folder(gguf.parent, gguf_file=gguf.name)
        eos = [t for t in range(arena.vocab_size) if arena._lc.llama_vocab_is_eog(arena._vocab, t)]
        tokenizer = ChatTokenizer(tokenizer.hf, sorted(set(tokenizer.eos_token_ids) | set(eos)))
        return cls(spec, arena, tokenizer)

    def new_sequence(self, capacity: int):
        return self.scheduler.new_sequence(capacity)
