"""A loaded model: a backend plus the loop, behind ``generate``.

Models are cached per spec in the process, so every agent and graph node that names the same model
shares one set of weights (and, with the prefix cache, one set of reusable KV states).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from pathlib import Path

from slmflow.runtime import embedded
from slmflow.runtime.backends.base import Backend
from slmflow.runtime.config import spec_for_role
from slmflow.runtime.errors import BackendUnavailableError, PromptError
from slmflow.runtime.loop import Response, run_generation
from slmflow.runtime.messages import Message, as_messages
from slmflow.runtime.sampling import Sampler, SamplingParams
from slmflow.runtime.specs import ModelSpec, SpecKind, parse_spec

Prompt = str | Seq[Message] | Seq[dict] | Seq[int]


class Model:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.spec = backend.spec

    @property
    def context_length(self) -> int:
        return self.backend.context_length

    def prompt_ids(self, prompt: Prompt, system: str | None = None) -> list[int]:
        """Token ids for a prompt: a string is one user turn, messages go through the chat template,
        and a list of ints is taken as ready token ids."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError("the prompt is empty", "pass a non-empty prompt")
            prompt = [Message(role="user", content=prompt)]
        elif prompt and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        messages = as_messages(prompt)
        if system is not None:
            messages = [Message(role="system", content=system), *messages]
        return self.tokenizer.apply_chat_template(messages)

    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 256,
        sampling: SamplingParams | None = None,
        stop: Seq[str] = (),
        system: str | None = None,
    ) -> Response:
        """Generate a reply. The returned :class:`Response` streams when iterated."""
        sampling = sampling or SamplingParams()
        ids = self.prompt_ids(prompt, system)
        if max_tokens < 1:
            raise PromptError(f"max_tokens must be at least 1, got {max_tokens}", "pass --max-tokens 1 or more")
        room = self.context_length - len(ids)
        if room < 1:
            raise PromptError(
                f"the prompt has {len(ids)} tokens but {self.spec} has a context window of "
                f"{self.context_length}",
                "shorten the prompt or use a model with a longer context",
            )
        max_tokens = min(max_tokens, room)
        seq = self.backend.new_sequence(capacity=len(ids) + max_tokens)
        sampler = Sampler(sampling, self.backend.vocab_size, ids, self.backend.device)
        return Response(
            run_generation(seq, ids, 0, self.tokenizer, sampler, max_tokens, stop, str(self.spec))
        )


_loaded: dict[str, Model] = {}


def _load_backend(spec: ModelSpec) -> Backend:
    if spec.kind is SpecKind.EMBEDDED:
        if spec.location == "transformers":
            from slmflow.runtime.backends.transformers_backend import TransformersBackend

            return TransformersBackend.load(spec, embedded.ensure_hf())
        from slmflow.runtime.backends.onnx_backend import OnnxGenaiBackend

        return OnnxGenaiBackend.load(spec, embedded.ensure_onnx())
    if spec.kind is SpecKind.ONNX:
        from slmflow.runtime.backends.onnx_backend import OnnxGenaiBackend

        return OnnxGenaiBackend.load(spec, spec.path)
    if spec.kind in (SpecKind.HF, SpecKind.GGUF):
        from slmflow.runtime.backends.transformers_backend import TransformersBackend

        path = spec.path
        if spec.kind is SpecKind.GGUF:
            return TransformersBackend.load(spec, path.parent, gguf_file=path.name)
        return TransformersBackend.load(spec, path)
    raise BackendUnavailableError(
        f"model spec '{spec}' needs the {spec.kind.value} backend, which this version does not include yet",
        "use a local model (embedded, hf:PATH, onnx:PATH or gguf:PATH)",
    )


def load_model(spec: str | ModelSpec | Path | None = None, *, role: str | None = None) -> Model:
    """Load (or reuse) a model by spec, or by role from ``slmflow.toml``; default: the embedded model."""
    if spec is not None and role is not None:
        raise PromptError("both a model spec and a role were given", "pass one of --model or --role")
    if spec is None:
        parsed = spec_for_role(role) if role is not None else parse_spec("embedded")
    else:
        parsed = spec if isinstance(spec, ModelSpec) else parse_spec(str(spec))
    key = str(parsed)
    if key not in _loaded:
        _loaded[key] = Model(_load_backend(parsed))
    return _loaded[key]
