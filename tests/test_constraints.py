"""Constrained decoding: every output honours its constraint, on the real embedded model."""

from __future__ import annotations

import json
import re
import string
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from slmflow.evals.bfcl import load_questions, to_json_schema
from slmflow.runtime import SamplingParams
from slmflow.runtime.constraints import (
    Choice,
    ConstraintError,
    Grammar,
    JsonSchema,
    Regex,
    StructuredOutputError,
    native_schema,
)

BFCL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bfcl" / "BFCL_v4_simple_python.json"
SAMPLE = 50


def bfcl_sample() -> list:
    questions = load_questions(BFCL)
    step = max(1, len(questions) // SAMPLE)
    return questions[::step][:SAMPLE]


def test_bfcl_simple_python_arguments_always_parse_and_validate(onnx_model):
    """The CI-sized sample; bench/constrained.py --bfcl-all runs every function."""
    invalid = []
    for q in bfcl_sample():
        fn = q.function[0]
        schema = to_json_schema(fn.parameters)
        prompt = (f"{q.question[0][-1]['content']}\nCall {fn.name}: {fn.description}\n"
                  "Reply with the arguments as JSON.")
        text = onnx_model.generate(prompt, constraint=JsonSchema(schema), max_tokens=400).text()
        try:
            jsonschema.validate(json.loads(text), schema)
        except (json.JSONDecodeError, jsonschema.ValidationError) as err:
            invalid.append((q.id, text, str(err)[:200]))
    assert invalid == []


class Person(BaseModel):
    name: str
    age: int


def test_output_type_returns_a_validated_instance(onnx_model):
    person = onnx_model.generate("Invent a person; give name and age as JSON.", output=Person, max_tokens=60)
    assert isinstance(person, Person)


def test_output_cut_off_raises_with_the_raw_text(onnx_model):
    with pytest.raises(StructuredOutputError) as info:
        onnx_model.generate("Invent a person; give name and age as JSON.", output=Person, max_tokens=3)
    assert info.value.raw_text.startswith("{")


def test_sampling_options_still_apply_under_a_constraint(onnx_model):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=11)
    outs = {onnx_model.generate("Pick a colour.", constraint=Choice(["red", "green", "blue"]),
                                sampling=SamplingParams(temperature=1.5, seed=s)).text() for s in range(8)}
    assert outs <= {"red", "green", "blue"} and len(outs) > 1
    a = onnx_model.generate("Pick a colour.", constraint=Choice(["red", "green", "blue"]), sampling=params).text()
    b = onnx_model.generate("Pick a colour.", constraint=Choice(["red", "green", "blue"]), sampling=params).text()
    assert a == b


def test_grammar_in_gbnf_and_lark(onnx_model):
    gbnf = 'root ::= "The answer is " ("yes" | "no") "."'
    assert onnx_model.generate("Is water wet?", constraint=Grammar(gbnf)).text() in (
        "The answer is yes.", "The answer is no.")
    lark = 'start: NUMBER " apples"\nNUMBER: /[1-9][0-9]?/'
    assert re.fullmatch(r"[1-9][0-9]? apples", onnx_model.generate("How many?", constraint=Grammar(lark)).text())


def test_jump_forward_skips_forward_passes_on_fixed_keys(onnx_model):
    schema = {"type": "object", "properties": {"customer_identifier": {"type": "integer"},
                                               "shipping_destination_city": {"type": "string", "maxLength": 12}},
              "required": ["customer_identifier", "shipping_destination_city"], "additionalProperties": False}
    result = onnx_model.generate("Order 42 ships to Paris. JSON please.", constraint=JsonSchema(schema),
                                 max_tokens=80).result()
    jsonschema.validate(json.loads(result.text), schema)
    assert result.usage.forced_tokens >= 8


@pytest.mark.parametrize("constraint, needle", [
    (Regex("[a-"), "unclosed character class"),
    (JsonSchema({"type": "object", "if": {"type": "object"}}), 'Unimplemented keys: ["if"]'),
    (Grammar("start: foo\nfoo: 'a' | "), "lexer error"),
    (JsonSchema({"type": "string", "format": "hostnamez"}), "Unknown format: hostnamez"),
])
def test_bad_constraints_fail_before_any_token(onnx_model, constraint, needle):
    before = onnx_model.cache.stats.tokens_prefilled
    with pytest.raises(ConstraintError, match=re.escape(needle)):
        onnx_model.generate("hello", constraint=constraint)
    assert onnx_model.cache.stats.tokens_prefilled == before


def test_fallback_path_for_engines_without_masks():
    assert native_schema(JsonSchema(Person))["properties"]["age"]["type"] == "integer"
    assert native_schema(Regex("a+")) is None
    assert JsonSchema(Person).validate_text('{"name": "Ann", "age": 3}') == {"name": "Ann", "age": 3}
    with pytest.raises(StructuredOutputError):
        JsonSchema(Person).validate_text('{"name": "Ann"}')
    with pytest.raises(StructuredOutputError):
        Choice(["a", "b"]).validate_text("c")


# --- property tests over generated constraints -------------------------------------------------

leaf = st.sampled_from([
    {"type": "integer", "minimum": 0, "maximum": 99},
    {"type": "number", "minimum": -5, "maximum": 5},
    {"type": "boolean"},
    {"type": "string", "maxLength": 8},
    {"type": "string", "enum": ["alpha", "beta"]},
    {"const": "fixed"},
    {"type": "string", "pattern": "^[a-z]{2,4}$"},
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}]},
])
names = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=6)


@st.composite
def schemas(draw, depth=2):
    props = draw(st.dictionaries(names, leaf if depth == 0 else st.one_of(leaf, schemas(depth=depth - 1)),
                                 min_size=1, max_size=3))
    node = {"type": "object", "properties": props, "additionalProperties": False,
            "required": draw(st.lists(st.sampled_from(sorted(props)), unique=True))}
    if draw(st.booleans()):
        return {"type": "array", "items": node, "minItems": 1, "maxItems": 2}
    return node


# No shrinking: each example runs the model, and a failing example is printed as found.
FAST = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
                phases=(Phase.explicit, Phase.reuse, Phase.generate), derandomize=True)


@FAST
@given(schema=schemas())
def test_every_schema_output_validates(onnx_model, schema):
    text = onnx_model.generate("Fill in the data.", constraint=JsonSchema(schema), max_tokens=400).text()
    jsonschema.validate(json.loads(text), schema)


@FAST
@given(pattern=st.sampled_from([r"[0-9]{3}-[0-9]{2}", r"(cat|dog)s?", r"[A-Z][a-z]{1,5}!", r"\d+\.\d\d"]))
def test_every_regex_output_matches(onnx_model, pattern):
    text = onnx_model.generate("Answer:", constraint=Regex(pattern), max_tokens=20).text()
    assert re.fullmatch(pattern, text)


@FAST
@given(options=st.lists(st.text(alphabet=string.ascii_letters + " ", min_size=1, max_size=10).filter(str.strip),
                        min_size=1, max_size=5, unique=True))
def test_every_choice_output_is_a_member(onnx_model, options):
    assert onnx_model.generate("Choose one.", constraint=Choice(options)).text() in options


class Status(str, Enum):
    NEW = "new"
    PAID = "paid"


class Address(BaseModel):
    city: str
    postcode: str | None = None


class Order(BaseModel):
    kind: Literal["pickup", "delivery"]
    status: Status
    items: Annotated[list[str], Field(min_length=1, max_length=3)]
    quantity: Annotated[int, Field(ge=1, le=9)]
    address: Address  # nested model: a $ref into $defs
    note: str | None = None


def test_schema_features_refs_enums_const_bounds_optional(onnx_model):
    schema = JsonSchema(Order).schema_dict
    assert "$defs" in schema and schema["additionalProperties"] is False
    order = onnx_model.generate("Make an order for two books delivered to Lyon.", output=Order, max_tokens=200)
    assert isinstance(order, Order) and 1 <= len(order.items) <= 3


def test_one_of_and_formats(onnx_model):
    schema = {"type": "object", "additionalProperties": False, "required": ["when", "contact"],
              "properties": {"when": {"type": "string", "format": "date"},
                             "contact": {"oneOf": [{"type": "string", "format": "email"},
                                                   {"type": "integer", "minimum": 100, "maximum": 999}]}}}
    value = json.loads(onnx_model.generate("Give a date and a contact.", constraint=JsonSchema(schema),
                                           max_tokens=120).text())
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", value["when"])


def test_jump_forward_gives_the_tokens_decoding_without_it_gives(hf_model):
    """Forced tokens are the ones the model would have been held to anyway, in its own tokenization:
    on a backend whose one-token and batched passes agree (fp32 transformers on a CPU), the reply
    with jump-forward equals the reply without it token for token."""
    assert hf_model.backend.batch_invariant
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                               "age": {"type": "integer"},
                                               "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20},
                                                           "maxItems": 2}},
              "required": ["name", "age", "hobbies"], "additionalProperties": False}
    prompt = "Describe a fictional person as JSON."
    forced = hf_model.generate(prompt, constraint=JsonSchema(schema), max_tokens=80, jump_forward=True).result()
    sampled = hf_model.generate(prompt, constraint=JsonSchema(schema), max_tokens=80, jump_forward=False).result()
    assert forced.usage.forced_tokens >= 5 and sampled.usage.forced_tokens == 0
    assert forced.token_ids == sampled.token_ids
