"""A loaded model: a backend, its prefix cache, and the loop, behind ``generate``.

Models are cached per spec in the process, so every agent and graph node that names the same model
shares one set of weights and one prefix cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from slmflow.runtime import embedded
from slmflow.runtime.backends.base import Backend
from slmflow.runtime.config import spec_for_role
from slmflow.runtime.constraints import (
    ConstraintEngine,
    JsonSchema,
    parse_output,
)
from slmflow.runtime.endpoints.base import EndpointModel
from slmflow.runtime.errors import BackendUnavailableError, PromptError
from slmflow.runtime.loop import Decoding, Response, run_generation
from slmflow.runtime.messages import Message, is_token_ids, prompt_messages
from slmflow.runtime.options import GenerateOptions
from slmflow.runtime.prefix_cache import (
    CacheBudget,
    CachedState,
    PrefixCache,
    common_prefix,
)
from slmflow.runtime.protocol import GenerativeModel, ModelView
from slmflow.runtime.registry import REGISTRY
from slmflow.runtime.sampling import Sampler, SamplingParams
from slmflow.runtime.specs import ModelSpec, SpecKind, parse_spec
from slmflow.runtime.tokenizer import ChatTokenizer
from slmflow.runtime.tool_calling import (
    ToolChoice,
    ToolSpec,
    ToolTurn,
    local_tool_turn,
    tool_prompt,
)

Prompt = str | Seq[Message] | Seq[dict] | Seq[int]


class Model:
    """A backend with its prefix cache behind one ``generate``: prompts (text or chat messages)
    become token ids by the model's own chat template, constraints and output types become token
    masks, and the loop (runtime/loop.py) decodes. ``load_model`` gives one per spec. Where the
    backend has a scheduler (runtime/scheduler.py), up to :attr:`concurrency` threads generate at
    once, their passes batched; elsewhere drive it from one thread at a time (its worker,
    runtime/registry.py, sees to both)."""

    def __init__(self, backend: Backend, cache_budget: CacheBudget | None = None) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.spec = backend.spec
        self.cache = PrefixCache(backend, cache_budget)

    @property
    def context_length(self) -> int:
        return self.backend.context_length

    def prompt_ids(self, prompt: Prompt, system: str | None = None) -> list[int]:
        """Token ids for a prompt: a list of ints is taken as ready token ids, anything else becomes
        chat messages (runtime/messages.py) and goes through the model's chat template."""
        if is_token_ids(prompt):
            return list(prompt)
        return self.tokenizer.apply_chat_template(prompt_messages(prompt, system))

    def fit(self, ids: list[int], max_tokens: int) -> int:
        """Check the prompt against the context window; return the number of tokens there is room for."""
        if not ids:
            raise PromptError("the prompt has no tokens", "pass a non-empty prompt")
        if max_tokens < 1:
            raise PromptError(f"max_tokens must be at least 1, got {max_tokens}", "pass --max-tokens 1 or more")
        room = self.context_length - len(ids)
        if room < 1:
            raise PromptError(
                f"the prompt has {len(ids)} tokens but {self.spec} has a context window of "
                f"{self.context_length}",
                "shorten the prompt or use a model with a longer context",
            )
        return min(max_tokens, room)

    def count_tokens(self, messages: Seq[Message | dict], tools: Seq = ()) -> int:
        """The prompt's length in tokens, tools shown as the model will see them."""
        return len(tool_prompt(self, messages, tools))

    @cached_property
    def constraints(self) -> ConstraintEngine:
        """The constraint engine for this model's tokenizer (built on first use, ~0.3 s)."""
        return ConstraintEngine(self.tokenizer.hf, self.backend.vocab_size, self.tokenizer.eos_token_ids)

    def generate(self, prompt: Prompt, options: GenerateOptions | None = None, **fields):
        """Generate a reply, reusing any cached prefix; ``options`` (or the same as keywords) are
        :class:`~slmflow.runtime.protocol.GenerateOptions`.

        Returns a :class:`Response` that streams when iterated; with ``output=SomeModel``, the
        reply is generated under that model's JSON Schema and returned as a validated instance.
        A bad ``constraint`` raises ConstraintError here, before any token is generated.
        ``stop_on_loops`` ends a reply that keeps repeating one block of tokens (see
        :class:`~slmflow.runtime.stopping.LoopDetector`) instead of running to ``max_tokens``; under
        a constraint, only where the output is complete (a loop inside a JSON value runs on).
        ``speculate`` lets greedy decoding (without penalties) take tokens it would copy from the
        prompt several per forward pass (prompt lookup, runtime/speculation.py), on backends whose
        wide and one-token passes agree (``batch_invariant``), so the output is the same.
        """
        opts = GenerateOptions.of(options, fields)
        ids = self.prompt_ids(prompt, opts.system)
        response = Response(self._pooled(ids, opts, self.decoding(ids, opts)))
        return response if opts.output is None else parse_output(opts.output, response.text())

    def tool_turn(self, messages: Seq[Message | dict], tools: Seq[ToolSpec], tool_choice: ToolChoice = "auto",
                  parallel: bool = False, max_tokens: int = 512, sampling: SamplingParams | None = None, *,
                  callable_tools: Seq[ToolSpec] | None = None) -> ToolTurn:
        """One turn held to the tool-call grammar (runtime/tool_calling.py): words, or calls to
        ``callable_tools`` (default: ``tools``, which are what the prompt shows)."""
        return local_tool_turn(self, messages, tools, tool_choice, parallel, max_tokens, sampling,
                               callable_tools=callable_tools)

    def decoding(self, ids: list[int], opts: GenerateOptions) -> Decoding:
        """The checked decoding plan for ``ids`` under ``opts``: the room left in the window, the
        constraint as a token matcher (a bad one fails here), loop stop and speculation."""
        if opts.images:
            raise PromptError(f"{self.spec} is a text model and takes no images",
                              "send images to the vision role's model (roles.vision in slmflow.toml)")
        constraint = JsonSchema(opts.output) if opts.output is not None else opts.constraint
        matcher = self.constraints.matcher(constraint) if constraint is not None else None
        return Decoding.local(opts, self.fit(ids, opts.max_tokens), str(self.spec), matcher, ids,
                              self.backend.batch_invariant)

    def _pooled(self, ids, opts: GenerateOptions, decoding: Decoding) -> Iterator[str]:
        state, cached = self.cache.acquire(ids, needed=len(ids) + decoding.max_tokens)
        path = list(ids)
        try:
            result = yield from self._stream(state, cached, ids, opts, decoding, path)
        finally:
            self.cache.release(state, path, prompt_len=len(ids))
        result.cache = self.cache.stats.model_copy()
        return result

    @property
    def concurrency(self) -> int:
        """How many generations may run at once: as many as the scheduler batches, else one."""
        scheduler = getattr(self.backend, "scheduler", None)
        return scheduler.max_sequences if scheduler is not None else 1

    def _stream(self, state: CachedState, cached: int, ids, opts: GenerateOptions, decoding: Decoding,
                path) -> Iterator[str]:
        sampler = Sampler(opts.sampler_params, self.backend.vocab_size, ids, self.backend.device)
        park = getattr(state.seq, "park", None)
        try:
            return (yield from run_generation(state.seq, ids, cached, self.tokenizer, sampler, decoding, path,
                                              on_prefilled=lambda: self.cache.prefilled(state)))
        finally:
            if park is not None:
                park()  # a batched sequence's slot goes to the next one; its KV stays for reuse

    def session(self) -> Session:
        """A conversation with its own KV state, for rewind, snapshots and branching."""
        return Session(self)


@dataclass(frozen=True)
class Snapshot:
    """A point in a session to come back to. On backends that can copy KV it carries a copy, so
    restoring costs no recomputation; elsewhere it carries the tokens and restoring re-prefills
    only what differs."""

    tokens: tuple[int, ...]
    state: CachedState | None


class Session(ModelView):
    """A token sequence pinned to one KV state.

    ``generate`` continues the session: with a prompt, it becomes the new token sequence (the part
    shared with what the session holds is reused); without one, generation continues from the
    session's tokens as they are (after a ``rewind`` or ``restore``, say).
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.tokens: list[int] = []
        self._state = CachedState(model.backend.new_sequence(model.context_length))

    @property
    def tokenizer(self) -> ChatTokenizer:
        return self.model.tokenizer

    def generate(self, prompt: Prompt | None = None, options: GenerateOptions | None = None, **fields):
        """Continue the session (see the class docstring); options as in :meth:`Model.generate`."""
        opts = GenerateOptions.of(options, fields)
        ids = list(self.tokens) if prompt is None else self.model.prompt_ids(prompt, opts.system)
        response = Response(self._run(ids, opts, self.model.decoding(ids, opts)))
        return response if opts.output is None else parse_output(opts.output, response.text())

    def tool_turn(self, messages: Seq[Message | dict], tools: Seq[ToolSpec], tool_choice: ToolChoice = "auto",
                  parallel: bool = False, max_tokens: int = 512, sampling: SamplingParams | None = None, *,
                  callable_tools: Seq[ToolSpec] | None = None) -> ToolTurn:
        """A tool turn that continues the session (its KV reused where the prompt shares it)."""
        return local_tool_turn(self, messages, tools, tool_choice, parallel, max_tokens, sampling,
                               callable_tools=callable_tools)

    def _run(self, ids, opts: GenerateOptions, decoding: Decoding) -> Iterator[str]:
        cache = self.model.cache
        cached = cache.reusable(self._state, ids)
        self._state.truncate(cached)
        cache.stats.tokens_reused += cached
        cache.stats.tokens_prefilled += len(ids) - cached
        path = list(ids)
        try:
            result = yield from self.model._stream(self._state, cached, ids, opts, decoding, path)
        finally:
            self.tokens = path
            self._state.record(path, len(ids), self.model.backend.batch_invariant)
        result.cache = cache.stats.model_copy()
        return result

    def rewind(self, n_tokens: int) -> None:
        """Forget the last ``n_tokens`` tokens (generated or prompt)."""
        if not 0 <= n_tokens <= len(self.tokens):
            raise PromptError(f"cannot rewind {n_tokens} tokens: the session holds {len(self.tokens)}",
                              f"pass a number between 0 and {len(self.tokens)}")
        keep = len(self.tokens) - n_tokens
        del self.tokens[keep:]
        self._state.truncate(min(keep, len(self._state.tokens)))

    def snapshot(self) -> Snapshot:
        copy = None
        if self.model.backend.can_fork:
            st = self._state
            copy = CachedState(st.seq.fork(), list(st.tokens), st.exact)
        return Snapshot(tuple(self.tokens), copy)

    def restore(self, snap: Snapshot) -> None:
        """Return to a snapshot; the next ``generate`` continues from it."""
        self.tokens = list(snap.tokens)
        if snap.state is not None:
            s = snap.state
            self._state = CachedState(s.seq.fork(), list(s.tokens), s.exact)
        else:
            self._state.truncate(min(common_prefix(self._state.tokens, self.tokens), self._state.exact))


def _load_backend(spec: ModelSpec) -> Backend:
    if spec.kind is SpecKind.EMBEDDED:
        if spec.location == "transformers":
            from slmflow.runtime.backends.transformers_backend import (
                TransformersBackend,
            )

            return TransformersBackend.load(spec, embedded.ensure_hf())
        if spec.location == "llamacpp":
            from slmflow.runtime.backends.llama_cpp_backend import LlamaCppBackend

            return LlamaCppBackend.load(spec, embedded.require_gguf(), embedded.tokenizer_folder())
        from slmflow.runtime.backends.onnx_backend import OnnxGenaiBackend

        return OnnxGenaiBackend.load(spec, embedded.ensure_onnx())
    if spec.kind is SpecKind.ONNX:
        from slmflow.runtime.backends.onnx_backend import OnnxGenaiBackend

        return OnnxGenaiBackend.load(spec, spec.path)
    if spec.kind is SpecKind.LLAMACPP:
        from slmflow.runtime.backends.llama_cpp_backend import LlamaCppBackend

        return LlamaCppBackend.load(spec, spec.path)
    if spec.kind in (SpecKind.HF, SpecKind.GGUF):
        from slmflow.runtime.backends.transformers_backend import TransformersBackend

        path = spec.path
        if spec.kind is SpecKind.GGUF:
            return TransformersBackend.load(spec, path.parent, gguf_file=path.name)
        return TransformersBackend.load(spec, path)
    raise BackendUnavailableError(f"model spec '{spec}' names no token-level backend",
                                  "use embedded, hf:PATH, onnx:PATH, gguf:PATH or llamacpp:PATH")


def _load(spec: ModelSpec) -> Model | EndpointModel:
    if spec.kind is SpecKind.OLLAMA:
        from slmflow.runtime.endpoints.ollama_endpoint import OllamaModel

        return OllamaModel(spec)
    if spec.kind is SpecKind.OPENAI:
        from slmflow.runtime.endpoints.openai_endpoint import OpenAIEndpointModel

        return OpenAIEndpointModel(spec)
    return Model(_load_backend(spec))


def load_model(spec: str | ModelSpec | Path | GenerativeModel | None = None, *,
               role: str | None = None) -> Model | EndpointModel:
    """Load (or reuse) a model by spec, or by role from ``slmflow.toml``; default: the embedded model.
    Local specs load weights into our loop; ``ollama:`` and ``openai:`` specs connect to a server
    (runtime/endpoints/). A model already loaded is returned as it is; one spec loads once per
    process, however many threads ask at once (runtime/registry.py, where ``unload`` frees it)."""
    if isinstance(spec, GenerativeModel):  # a loaded model, or a caller's own (runtime/protocol.py)
        return spec
    if spec is not None and role is not None:
        raise PromptError("both a model spec and a role were given", "pass one of --model or --role")
    if spec is None:
        parsed = spec_for_role(role) if role is not None else parse_spec("embedded")
    else:
        parsed = spec if isinstance(spec, ModelSpec) else parse_spec(str(spec))
    return REGISTRY.get(str(parsed), lambda: _load(parsed))
