"""The embedding tool selector and what it makes of tool_choice="auto" (real MiniLM, real model)."""

from __future__ import annotations

import re

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


def test_arithmetic_and_clock_requests_reach_their_tools_by_trigger():
    from slmflow.tools import calculator, current_time

    selector = ToolSelector()
    tools = [calculator.spec, current_time.spec, WEATHER]
    for request, name in [("What is 17 * 23?", "calculator"), ("What is 12% of 250?", "calculator"),
                          ("What time is it now?", "current_time"), ("what is the date today", "current_time")]:
        selection = selector.select(request, tools)
        assert (selection.allowed, selection.triggered) == ([name], name), request
    for request in ("Tell me about 1990s music", "What happened on 2026-12-03?", "Is 12/25/2026 a holiday?",
                    "Call 555-1234.", "Is 1920x1080 HD?"):
        assert selector.select(request, tools).triggered is None, request
    assert "triggers" not in calculator.spec.model_dump()  # never sent to a model or an engine


def test_answer_after_a_tool_result_shows_its_digits_verbatim(onnx_model):
    from slmflow.runtime.messages import as_messages
    from slmflow.runtime.tool_calling import answer_grammar, tool_result_values

    messages = [{"role": "user", "content": "What time is it now?"},
                {"role": "assistant", "content": '<tool_call>{"name": "current_time", "arguments": {}}</tool_call>'},
                {"role": "tool", "content": "2026-12-03T06:46:29+00:00"}]
    assert tool_result_values(as_messages(messages)) == ["2026-12-03T06:46:29+00:00"]
    grammar = answer_grammar(["391"])
    assert onnx_model.constraints.accepts(grammar, "17 * 23 is 391.") is False  # digits not from the tool
    assert onnx_model.constraints.accepts(grammar, "The product is 391.")
    assert onnx_model.constraints.accepts(grammar, "You can use the following code.") is False  # no value shown
    assert onnx_model.constraints.accepts(grammar, "It is 391. Here is a list of ways") is False  # ends at it
    assert onnx_model.constraints.accepts(grammar, "391 is a very large number.") is False  # nothing after it
    two = answer_grammar(["7 C", "12 km/h"])
    assert onnx_model.constraints.accepts(two, "Rain at 7 C, wind 12 km/h.")
    assert onnx_model.constraints.accepts(two, "It is 7 C.That is 12 km/h") is False  # no sentence after a stop
    turn = generate_with_tools(onnx_model, messages, [CLOCK], selector=ToolSelector(), max_tokens=48)
    # Every digit shown is inside a verbatim copy of the tool's value.
    assert "2026-12-03T06:46:29+00:00" in turn.text, turn.text
    assert not re.search(r"\d", turn.text.replace("2026-12-03T06:46:29+00:00", "")), turn.text


def test_tool_values_include_the_short_strings_of_a_json_result_but_not_an_error():
    from slmflow.runtime.messages import as_messages
    from slmflow.runtime.tool_calling import tool_result_values

    listed = [{"role": "user", "content": "Which files are there?"},
              {"role": "tool", "content": '["coffee.txt", "notes/2026.md"]'}]
    assert tool_result_values(as_messages(listed)) == ["notes/2026.md", "coffee.txt"]
    failed = [{"role": "user", "content": "What is 1 / 0?"}, {"role": "tool", "content": "ERROR: division by 0"}]
    assert tool_result_values(as_messages(failed)) == []
