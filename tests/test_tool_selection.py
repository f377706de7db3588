"""The embedding tool selector and what it makes of tool_choice="auto" (real MiniLM, real model)."""

from __future__ import annotations

from slmflow.runtime.constraints import JsonSchema, _closed_objects
from slmflow.runtime.tool_calling import ToolSpec, generate_with_tools
from slmflow.runtime.tool_selection import ToolSelector

WEATHER = ToolSpec(name="get_weather", description="Current weather (temperature, rain, wind) for a city.",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
CLOCK = ToolSpec(name="current_time", description="The current date and time in a time zone.",
                 parameters={"type": "object", "properties": {"timezone": {"type": "string"}}})


def test_selector_keeps_the_fitting_tool_and_none_for_small_talk():
    selector = ToolSelector()
    assert selector.select("What's the weather like in Oslo today?", [WEATHER, CLOCK]).allowed == ["get_weather"]
    assert selector.select("Write me a haiku about friendship.", [WEATHER, CLOCK]).allowed == []


def test_auto_with_selector_calls_the_selected_tool(onnx_model):
    turn = generate_with_tools(onnx_model, [{"role": "user", "content": "What's the weather like in Oslo today?"}],
                               [WEATHER, CLOCK], selector=ToolSelector(), max_tokens=64)
    assert [c.name for c in turn.tool_calls] == ["get_weather"] and turn.selection.allowed == ["get_weather"]


def test_auto_with_selector_answers_in_words_when_no_tool_fits(onnx_model):
    turn = generate_with_tools(onnx_model, [{"role": "user", "content": "Write me a haiku about friendship."}],
                               [WEATHER, CLOCK], selector=ToolSelector(), max_tokens=48)
    assert turn.tool_calls == [] and turn.text and "<tool_call>" not in turn.text


def test_turn_after_a_tool_result_is_an_answer(onnx_model):
    messages = [{"role": "user", "content": "What's the weather like in Oslo today?"},
                {"role": "assistant", "content": '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                                 "</tool_call>"},
                {"role": "tool", "content": "Rain, 7 C"}]
    turn = generate_with_tools(onnx_model, messages, [WEATHER, CLOCK], selector=ToolSelector(), max_tokens=48)
    assert turn.tool_calls == [] and turn.text


def test_required_but_undeclared_property_stays_satisfiable(onnx_model):
    schema = _closed_objects({"type": "object", "properties": {}, "required": ["adults"]})
    assert schema["properties"] == {"adults": {}}
    assert onnx_model.constraints.accepts(JsonSchema(schema), '{"adults": 2}')
