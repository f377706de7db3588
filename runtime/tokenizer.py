"""Text ↔ tokens for every backend, with the model's own chat template.

Both backends read the same tokenizer files (tokenizer.json, tokenizer_config.json and the chat
template), so one wrapper over the Hugging Face fast tokenizer serves them all and the prompt tokens
are identical whichever backend runs them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from slmflow.runtime.errors import ModelLoadError, PromptError
from slmflow.runtime.messages import Message

#: tokenizer_config.json classes that are a plain tokenizer.json with nothing model-specific.
_PLAIN_TOKENIZER_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})


def _load_hf_tokenizer(folder: Path, gguf_file: str | None):
    """The folder's tokenizer. A plain tokenizer.json (the ONNX model builder writes one) is loaded
    by its class directly: AutoTokenizer reads the model config first, and transformers' config
    module imports torch (~190 MB resident), which a process running an ONNX model never needs."""
    config = folder / "tokenizer_config.json"
    if gguf_file is None and (folder / "tokenizer.json").is_file() and config.is_file():
        try:
            plain = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") in _PLAIN_TOKENIZER_CLASSES
        except (OSError, json.JSONDecodeError):
            plain = False  # AutoTokenizer below reports a broken config by name
        if plain:
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)


class ChatTokenizer:
    def __init__(self, hf_tokenizer, eos_token_ids: Sequence[int]) -> None:
        self.hf = hf_tokenizer
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)

    @classmethod
    def from_folder(cls, folder: Path, extra_eos: Sequence[int] = (), gguf_file: str | None = None):
        try:
            hf = _load_hf_tokenizer(folder, gguf_file)
        except Exception as err:  # transformers raises many types for a broken folder
            raise ModelLoadError(
                f"cannot load the tokenizer from {folder}: {err}",
                "the folder needs tokenizer.json or tokenizer.model and tokenizer_config.json",
            ) from err
        eos = set(extra_eos)
        if hf.eos_token_id is not None:
            eos.add(hf.eos_token_id)
        return cls(hf, sorted(eos))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Prompt tokens for a conversation; the reusable prefix of later turns is computed on these."""
        return list(self._chat_template(messages, add_generation_prompt, tokenize=True))

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The same prompt as text, for engines that tokenize it themselves (onnxruntime-genai's
        multimodal processor, which expands image tags into image tokens)."""
        return self._chat_template(messages, add_generation_prompt, tokenize=False)

    def _chat_template(self, messages: Sequence[Message], add_generation_prompt: bool, tokenize: bool):
        if not messages:
            raise PromptError("no messages given", "pass a prompt or at least one message")
        if self.hf.chat_template is None:
            raise PromptError(
                "this model has no chat template",
                "pass a plain token-id prompt, or use an instruct model whose tokenizer defines one",
            )
        dicts = [m.model_dump(exclude_none=True) for m in messages]
        return self.hf.apply_chat_template(
            dicts, add_generation_prompt=add_generation_prompt, tokenize=tokenize, return_dict=False
        )


class IncrementalDetokenizer:
    """Turns a growing token list into text deltas.

    Decoding token by token breaks multi-byte characters and word-boundary spaces, so each step
    decodes a short window from a settled offset and emits only text that can no longer change
    (the same scheme as text-generation-inference and vLLM).
    """

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self._decode = tokenizer.decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        full_text = self._decode(self.ids[self._prefix :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return full_text[len(prefix_text) :]
        return ""
