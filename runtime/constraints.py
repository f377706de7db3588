"""Constraints as values, and the one adapter that enforces them in the loop.

``JsonSchema``, ``Regex``, ``Choice`` and ``Grammar`` describe what the output must look like. The
engine is llguidance (see bench/RESULTS.md for why): each constraint compiles to an llguidance
grammar, a matcher computes the allowed-token mask for the next position, and the loop applies it
to the logits before sampling, so every sampling option still works under a constraint. Where the
grammar leaves only one way forward, ``forced_tokens`` returns those tokens so the loop can append
them in one forward pass (jump-forward decoding).

Engines that take no mask (served models) use ``native_schema`` to pass a JSON Schema through
their own structured-output option and ``validate_text`` to check what comes back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ValidationError
from slmflow.runtime.errors import SlmflowError

if TYPE_CHECKING:
    import torch

# One space after ',' and ':' and no other whitespace: the model cannot pad until the token limit.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ConstraintError(SlmflowError):
    """A constraint that cannot be compiled: invalid regex, grammar syntax, unsupported schema keyword."""


class StructuredOutputError(SlmflowError):
    """Generated text that does not parse or validate as the requested output type."""

    def __init__(self, problem: str, raw_text: str) -> None:
        super().__init__(problem, "raise max_tokens if the output was cut off; the raw text is on .raw_text")
        self.raw_text = raw_text


# Generation-time caps for values the schema leaves unbounded. A small model can loop inside a
# string, a number's digits or an array until the token limit cuts the JSON off; with these caps it
# must close them. Outputs remain valid against the caller's schema (the caps only narrow it).
MAX_STRING_CHARS = 96
MAX_ARRAY_ITEMS = 12
NUMBER_STEP = 1e-6
INTEGER_LIMIT = 10**15


SHAPE_KEYS = ("type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "properties", "items", "not")
# An untyped node accepts any JSON; generate it as a scalar or a flat list of scalars.
ANY_VALUE = {"type": ["string", "number", "boolean", "null", "array"],
             "items": {"type": ["string", "number", "boolean", "null"]}}


def _bounded(node, in_schema_map: bool = False):
    if isinstance(node, list):
        return [_bounded(v) for v in node]
    if not isinstance(node, dict):
        return node
    if in_schema_map:  # the values of properties / $defs are schemas, the keys are names
        return {k: _bounded(v) for k, v in node.items()}
    if not any(k in node for k in SHAPE_KEYS):
        node = {**node, **ANY_VALUE}
    node = {k: (v if k in ("enum", "const", "default", "examples")
                else _bounded(v, in_schema_map=k in ("properties", "$defs", "definitions", "patternProperties")))
            for k, v in node.items()}
    kinds = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
    free = not any(k in node for k in ("enum", "const"))
    if free and "string" in kinds and not any(k in node for k in ("maxLength", "pattern")):
        node["maxLength"] = MAX_STRING_CHARS
    if free and "array" in kinds and "maxItems" not in node:
        node["maxItems"] = max(MAX_ARRAY_ITEMS, node.get("minItems", 0))
    if free and "number" in kinds and "multipleOf" not in node:
        node["multipleOf"] = NUMBER_STEP
    if free and ("integer" in kinds or "number" in kinds):
        node.setdefault("maximum", INTEGER_LIMIT)
        node.setdefault("minimum", -INTEGER_LIMIT)
    return node


@dataclass(frozen=True)
class JsonSchema:
    """Output is JSON valid against ``schema`` (a dict, or a pydantic model class).

    ``bounded`` (default) caps unbounded strings, arrays and decimals while generating; see
    MAX_STRING_CHARS and friends.
    """

    schema: Any
    bounded: bool = True

    @property
    def schema_dict(self) -> dict:
        if isinstance(self.schema, type) and issubclass(self.schema, BaseModel):
            # pydantic drops unknown fields anyway, so generating them only wastes tokens: close
            # every object the model class describes.
            return _closed_objects(self.schema.model_json_schema())
        if isinstance(self.schema, str):
            return json.loads(self.schema)
        return self.schema

    def grammar(self) -> str:
        import llguidance

        try:
            schema = _bounded(self.schema_dict) if self.bounded else self.schema_dict
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except ValueError as err:
            raise ConstraintError(f"invalid JSON Schema: {err}", "pass a JSON object schema") from err

    def validate_text(self, text: str) -> Any:
        import jsonschema

        try:
            value = json.loads(text)
            jsonschema.validate(value, self.schema_dict)
        except (json.JSONDecodeError, jsonschema.ValidationError) as err:
            raise StructuredOutputError(f"output is not valid against the schema: {err}", text) from err
        return value


def _closed_objects(node):
    """Objects that allow no property they do not declare. A property that is required but not
    declared (schemas in the wild have them) is declared with any value, so the closed object
    stays satisfiable."""
    if isinstance(node, dict):
        node = {k: _closed_objects(v) for k, v in node.items()}
        if node.get("type") == "object" and "additionalProperties" not in node:
            node["additionalProperties"] = False
            props = node.setdefault("properties", {})
            for name in node.get("required", []):
                props.setdefault(name, {})
    elif isinstance(node, list):
        node = [_closed_objects(v) for v in node]
    return node


@dataclass(frozen=True)
class Regex:
    """Output matches ``pattern`` in full."""

    pattern: str

    def grammar(self) -> str:
        import llguidance

        return llguidance.LLMatcher.grammar_from_regex(self.pattern)

    def validate_text(self, text: str) -> str:
        if re.fullmatch(self.pattern, text) is None:
            raise StructuredOutputError(f"output does not match /{self.pattern}/", text)
        return text


@dataclass(frozen=True)
class Choice:
    """Output is exactly one of ``options``."""

    options: Sequence[str]

    def __post_init__(self) -> None:
        if not self.options or not all(isinstance(o, str) and o for o in self.options):
            raise ConstraintError("Choice needs at least one non-empty string option", "pass e.g. Choice(['yes', 'no'])")

    def grammar(self) -> str:
        import llguidance

        alternatives = " | ".join(json.dumps(o) for o in self.options)
        return llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}")

    def validate_text(self, text: str) -> str:
        if text not in self.options:
            raise StructuredOutputError(f"output {text!r} is not one of {list(self.options)}", text)
        return text


@dataclass(frozen=True)
class Grammar:
    """Output follows a Lark grammar (or a GBNF one, as llama.cpp writes them; it is converted)."""

    text: str

    def grammar(self) -> str:
        import llguidance
        from llguidance.gbnf_to_lark import any_to_lark

        try:
            lark = any_to_lark(self.text)
        except Exception as err:  # the converter raises plain exceptions on malformed GBNF
            raise ConstraintError(f"grammar syntax error: {err}", "check the grammar text") from err
        return llguidance.LLMatcher.grammar_from_lark(lark)

    def validate_text(self, text: str) -> str:
        raise ConstraintError(
            "this model's engine cannot enforce a grammar", "use a local model, or a JsonSchema/Regex/Choice constraint"
        )


_WORDS = re.compile(r"\w+|\s+|[^\w\s]")
_WORD_CHAR = re.compile(r"\w")


@dataclass(frozen=True)
class QuoteSpan:
    """Where a quote stands: the index of its source and its character range there."""

    source: int
    start: int
    end: int
    #: 1.0 for a verbatim quote; below 1, a snapped one (the share of words the text and span share).
    similarity: float = 1.0


@dataclass(frozen=True)
class Quote:
    """Output is a verbatim piece of one of ``sources``, cut on word boundaries (a word is a run of
    letters and digits, or one other character). The loop enforces it token by token (llguidance's
    substring lexeme), so a model can neither write a word its source does not have nor join two
    places of it. The piece may begin with the whitespace before its first word (a model's word
    tokens carry their leading space); it never ends on whitespace. The empty output is allowed
    too: a caller that needs a quote treats it as none."""

    sources: Sequence[str]

    def __post_init__(self) -> None:
        if not self.sources or not all(isinstance(t, str) and t.strip() for t in self.sources):
            raise ConstraintError("Quote needs at least one non-empty source text", "pass the texts to quote from")

    def grammar(self) -> str:
        import llguidance

        rules = [f"Q{i}: {substring_lexeme(text)}" for i, text in enumerate(self.sources)]
        alternatives = " | ".join(f"Q{i}" for i in range(len(self.sources)))
        return llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}\n" + "\n".join(rules))

    def locate(self, text: str) -> QuoteSpan | None:
        """The first place a source holds ``text`` verbatim on word boundaries, or None."""
        needle = text.strip()
        if not needle:
            return None
        for index, source in enumerate(self.sources):
            for match in re.finditer(re.escape(needle), source):
                a, b = match.start(), match.end()
                before = source[a - 1] if a else " "
                after = source[b] if b < len(source) else " "
                if _boundary(before, needle[0]) and _boundary(needle[-1], after):
                    return QuoteSpan(index, a, b)
        return None

    def snap(self, text: str, least: float = 0.8) -> QuoteSpan | None:
        """The source span closest to ``text`` (a served model's quote that was not verbatim): the
        window of the same number of words (give or take two) sharing most of its words in order,
        if at least ``least`` of them; else None. Verbatim text is located exactly."""
        import difflib

        exact = self.locate(text)
        if exact is not None:
            return exact
        wanted = [w.lower() for w in re.findall(r"\w+", text)]
        if not wanted:
            return None
        best: QuoteSpan | None = None
        for index, source in enumerate(self.sources):
            words = list(re.finditer(r"\w+", source))
            lowered = [w.group().lower() for w in words]
            for size in range(max(1, len(wanted) - 2), len(wanted) + 3):
                for first in range(0, max(len(words) - size, 0) + 1):
                    window = lowered[first:first + size]
                    if not window:
                        continue
                    ratio = difflib.SequenceMatcher(None, wanted, window, autojunk=False).ratio()
                    if ratio >= least and (best is None or ratio > best.similarity):
                        best = QuoteSpan(index, words[first].start(), words[first + len(window) - 1].end(), ratio)
        return best

    def validate_text(self, text: str) -> str:
        if self.locate(text) is None:
            raise StructuredOutputError("output is not a verbatim quote of its sources", text)
        return text


def substring_lexeme(source: str) -> str:
    """A Lark terminal body (llguidance's substring lexeme) matching any piece of ``source`` cut on
    word boundaries; what :class:`Quote` is made of, for grammars that quote inside a larger rule."""
    return f"%regex {json.dumps({'substring_chunks': _word_pieces(source)})}"


def _word_pieces(source: str) -> list[str]:
    """The source as words, each with the whitespace before it joined on."""
    pieces, gap = [], ""
    for part in _WORDS.findall(source):
        if part.isspace():
            gap += part
        else:
            pieces.append(gap + part)
            gap = ""
    return pieces


def _boundary(left: str, right: str) -> bool:
    """Whether a cut between two characters falls between words (not inside a run of ``\\w``)."""
    return not (_WORD_CHAR.fullmatch(left) and _WORD_CHAR.fullmatch(right))


Constraint = JsonSchema | Regex | Choice | Grammar | Quote


def native_schema(constraint: Constraint) -> dict | None:
    """The JSON Schema to hand an engine's own structured-output option (None: the engine cannot)."""
    return constraint.schema_dict if isinstance(constraint, JsonSchema) else None


class ConstraintEngine:
    """llguidance bound to one model's tokenizer; compiled grammars are cached by text."""

    def __init__(self, hf_tokenizer, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        import llguidance.hf

        self.vocab_size = vocab_size
        self._tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size,
                                                      eos_token=sorted(eos_token_ids) or None)
        self._compile = lru_cache(maxsize=256)(self._compile_uncached)

    def _compile_uncached(self, grammar: str):
        import llguidance

        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            return matcher.get_error()
        return matcher

    def matcher(self, constraint: Constraint) -> ConstraintMatcher:
        """A fresh matcher, or ConstraintError (with the engine's message) before any token is generated."""
        compiled = self._compile(constraint.grammar())
        if isinstance(compiled, str):
            kind = type(constraint).__name__
            raise ConstraintError(f"{kind} constraint rejected: {compiled.strip()}",
                                  "fix the part of the constraint the engine points at")
        return ConstraintMatcher(compiled.deep_copy(), self.vocab_size)

    def accepts(self, constraint: Constraint, text: str) -> bool:
        """Whether the model could emit ``text`` (as the tokenizer splits it) under ``constraint``."""
        matcher = self.matcher(constraint)._m
        tokens = self._tokenizer.tokenize_str(text)
        return matcher.consume_tokens(tokens) and matcher.is_accepting()


class ConstraintMatcher:
    """Per-generation state: which tokens may come next."""

    def __init__(self, matcher, vocab_size: int) -> None:
        import llguidance.numpy

        self._m = matcher
        self._vocab = vocab_size
        self._fill = llguidance.numpy.fill_next_token_bitmask
        self._words = llguidance.numpy.allocate_token_bitmask(1, vocab_size)  # filled in place, no copy
        self._bytes = self._words.view(np.uint8)
        self._pinned: torch.Tensor | None = None  # the words in pinned memory, once a GPU reads them
        self._device_words: torch.Tensor | None = None
        self._shifts: torch.Tensor | None = None

    def mask(self, logits):
        """Logits (a torch tensor or a numpy array, returned as the same kind) with every
        disallowed token at -inf (padding beyond the vocabulary included)."""
        self.fill()
        return self.apply(logits)

    def fill(self) -> None:
        """Compute the allowed-token bitmask for the next position (the engine's work)."""
        self._fill(self._m, self._words, 0)

    def apply(self, logits):
        """Set the logits of tokens outside the last computed bitmask to -inf."""
        on_host = isinstance(logits, np.ndarray)
        if not on_host and logits.device.type != "cpu":
            return self._apply_on_device(logits)
        n = logits.shape[-1]
        bits = np.unpackbits(self._bytes, bitorder="little").view(np.bool_)
        if bits.shape[0] < n:
            bits = np.pad(bits, (0, n - bits.shape[0]))
        out = np.full(n, -np.inf, dtype=np.float32)  # numpy's masked copy is the fastest path on the host
        np.copyto(out, logits if on_host else logits.float().numpy(), where=bits[:n])
        if on_host:
            return out
        import torch

        return torch.from_numpy(out)

    def _apply_on_device(self, logits: torch.Tensor) -> torch.Tensor:
        """The packed words travel (vocab/8 bytes, from pinned memory, without waiting) and are
        unpacked on the device. Reusing the host buffer is safe: the loop waits for each sampled
        token, which comes after this copy, before the engine fills the buffer again."""
        import torch

        if self._pinned is None:  # from now on the engine fills a pinned buffer
            self._pinned = torch.from_numpy(self._words).pin_memory()
            self._words = self._pinned.numpy()
            self._bytes = self._words.view(np.uint8)
        if self._device_words is None or self._device_words.device != logits.device:
            self._device_words = torch.empty(self._words.shape[1], dtype=torch.int32, device=logits.device)
            self._shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
        self._device_words.copy_(self._pinned[0], non_blocking=True)
        n = logits.shape[-1]
        allowed = ((self._device_words.unsqueeze(-1) >> self._shifts) & 1).view(-1).bool()
        if allowed.shape[0] < n:
            allowed = torch.nn.functional.pad(allowed, (0, n - allowed.shape[0]))
        return logits.masked_fill(~allowed[:n], float("-inf"))

    def advance(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise ConstraintError(f"constraint engine refused token {token}: {self._m.get_error()}",
                                  "report this as a bug with the constraint")

    def forced_tokens(self) -> list[int]:
        return list(self._m.compute_ff_tokens())

    @property
    def finished(self) -> bool:
        return self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        """Whether the output so far is complete under the constraint (it may still go on)."""
        return self._m.is_accepting()


def parse_output(output_type: type[BaseModel], text: str) -> BaseModel:
    try:
        return output_type.model_validate_json(text)
    except ValidationError as err:
        raise StructuredOutputError(
            f"output is not a valid {output_type.__name__}: {err.errors()[0]['msg']}", text
        ) from err
