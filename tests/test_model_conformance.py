"""Every kind of model keeps one contract (runtime/protocol.py): the same ``generate`` with the
same options, streaming, constraints and output types, tool turns and token counts. One suite,
parametrized over the kinds: the embedded model, a session on it, the OpenAI and Ollama endpoints
(``agents serve`` on the embedded model, a real HTTP server), and both vision kinds (tiny
random-weight models, so only what the contract guarantees is asserted, never what they say)."""

from __future__ import annotations

from typing import Literal

import pytest
from conftest import build_tiny_llava, build_tiny_phi3v_onnx, render_text
from pydantic import BaseModel
from serving import app_server
from slmflow.runtime import load_model
from slmflow.runtime.constraints import Choice
from slmflow.runtime.endpoints.ollama_endpoint import OllamaModel
from slmflow.runtime.errors import PromptError
from slmflow.runtime.options import GenerateOptions
from slmflow.runtime.protocol import GenerativeModel
from slmflow.runtime.specs import parse_spec
from slmflow.runtime.tool_calling import CALL_OPEN, ToolSpec
from slmflow.serve.app import create_app
from slmflow.serve.state import ServeSettings

pytestmark = pytest.mark.slow

KINDS = ["model", "session", "openai-endpoint", "ollama-endpoint", "vision-hf", "vision-onnx"]
LOCAL = {"model", "session", "vision-hf", "vision-onnx"}
VISION = {"vision-hf", "vision-onnx"}
WEATHER = ToolSpec(name="get_weather", description="Current weather in a city.",
                   parameters={"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}},
                               "required": ["unit"]})
COLOURS = ["red", "green", "blue"]


class Colour(BaseModel):
    name: Literal["red", "green", "blue"]


@pytest.fixture(scope="module")
def serve_url(onnx_model):
    with app_server(create_app({"embedded": onnx_model}, ServeSettings(tool_selector=False))) as url:
        yield url


@pytest.fixture(scope="module")
def vision_folders(tmp_path_factory):
    return {"vision-hf": f"hf:{build_tiny_llava(tmp_path_factory.mktemp('llava') / 'hf')}",
            "vision-onnx": f"onnx:{build_tiny_phi3v_onnx(tmp_path_factory.mktemp('phi3v'))}"}


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def model(kind, request, monkeypatch):
    if kind == "model":
        return request.getfixturevalue("onnx_model")
    if kind == "session":
        return request.getfixturevalue("onnx_model").session()
    if kind == "openai-endpoint":
        return load_model(f"openai:embedded@{request.getfixturevalue('serve_url')}/v1")
    if kind == "ollama-endpoint":
        monkeypatch.setenv("OLLAMA_HOST", request.getfixturevalue("serve_url"))
        return OllamaModel(parse_spec("ollama:embedded"))
    from slmflow.runtime.vision import load_vision_model

    return load_vision_model(request.getfixturevalue("vision_folders")[kind])


def test_every_kind_is_a_generative_model(model):
    assert isinstance(model, GenerativeModel)
    assert isinstance(model.context_length, int) and model.context_length >= 512  # the tiny llava has 512


def test_generate_streams_what_its_result_holds(model):
    response = model.generate("Name three colours.", max_tokens=8)
    deltas = list(response)
    result = response.result()
    assert "".join(deltas) == result.text
    assert 1 <= result.usage.completion_tokens <= 8
    assert result.finish_reason == "stop" or result.usage.completion_tokens == 8  # "length" only at the limit


def test_options_as_one_object_or_as_keywords_are_the_same_call(model):
    as_keywords = model.generate("Name a fruit.", max_tokens=6, stop=["\n"]).text()
    assert model.generate("Name a fruit.", GenerateOptions(max_tokens=6, stop=["\n"])).text() == as_keywords
    assert model.generate("Name a fruit.", GenerateOptions(max_tokens=2), max_tokens=6, stop=["\n"]).text() \
        == as_keywords  # keywords set on top of the object


def test_a_misspelt_option_is_refused_by_name(model):
    with pytest.raises(PromptError, match="no option 'max_token'"):
        model.generate("Hi", max_token=5)
    with pytest.raises(PromptError, match="max_tokens must be at least 1"):
        model.generate("Hi", max_tokens=0)
    with pytest.raises(PromptError, match="the prompt is empty"):
        model.generate("  ")


def test_a_choice_constraint_holds_the_reply(model):
    assert model.generate("Pick a colour.", constraint=Choice(COLOURS)).text() in COLOURS


def test_an_output_type_comes_back_validated(model):
    picked = model.generate("Pick a colour, as JSON.", output=Colour, max_tokens=24)
    assert isinstance(picked, Colour) and picked.name in COLOURS


def test_tool_turns_call_when_required_and_speak_when_not(model):
    asked = [{"role": "user", "content": "What is the weather in Oslo, in celsius?"}]
    call = model.tool_turn(asked, [WEATHER], tool_choice="required", max_tokens=48)
    assert [c.name for c in call.tool_calls] == ["get_weather"]
    assert call.tool_calls[0].arguments["unit"] in ("celsius", "fahrenheit") and call.text == ""
    words = model.tool_turn(asked, [WEATHER], tool_choice="none", max_tokens=8)
    assert words.tool_calls == [] and words.text == words.result.text and CALL_OPEN not in words.text


def test_count_tokens_measures_the_prompt_the_model_is_given(model, kind):
    short = model.count_tokens([{"role": "user", "content": "Hi"}])
    longer = model.count_tokens([{"role": "user", "content": "Hi there, " * 20}])
    with_tools = model.count_tokens([{"role": "user", "content": "Hi"}], [WEATHER])
    assert 0 < short < longer and short < with_tools
    if kind in LOCAL:  # exact where our own tokenizer builds the prompt; endpoints give an upper estimate
        assert model.generate([{"role": "user", "content": "Hi"}], max_tokens=1).result().usage.prompt_tokens \
            == short


def test_images_go_to_the_kinds_that_see_them(model, kind, tmp_path):
    page = render_text(tmp_path / "page.png", ["Total 42"])
    if kind in VISION:
        result = model.generate("Read it.", images=[page], max_tokens=4).result()
        text_only = model.generate("Read it.", max_tokens=4).result()
        assert result.usage.prompt_tokens > text_only.usage.prompt_tokens  # the image's positions
        assert 1 <= result.usage.completion_tokens <= 4
    else:
        with pytest.raises(PromptError, match="image"):
            model.generate("Read it.", images=[page], max_tokens=4)
