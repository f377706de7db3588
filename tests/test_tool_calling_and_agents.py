"""Tool calling under the grammar, and the agent loop, on the embedded model."""

from __future__ import annotations

import re

import jsonschema
import pytest
from slmflow.agents import Agent, AgentLimits
from slmflow.runtime import load_model
from slmflow.runtime.constraints import ConstraintError
from slmflow.runtime.errors import PromptError
from slmflow.runtime.tool_calling import generate_with_tools
from slmflow.tools import ToolError, calculator, current_time, tool


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Current weather for a city."""
    return f"Sunny, 21 degrees {unit} in {city}"


TOOLS = [calculator.spec, current_time.spec, get_weather.spec]
ASK = [{"role": "user", "content": "What is 17 times 23?"}]


def test_required_choice_always_calls_a_real_tool_with_valid_arguments(onnx_model):
    for question in ("What is 17 times 23?", "Weather in Oslo?", "What time is it in Tokyo?", "Tell me a joke."):
        turn = generate_with_tools(onnx_model, [{"role": "user", "content": question}], TOOLS,
                                   tool_choice="required", max_tokens=160)
        assert len(turn.tool_calls) == 1
        spec = {t.name: t for t in TOOLS}[turn.tool_calls[0].name]
        jsonschema.validate(turn.tool_calls[0].arguments, spec.parameters)


def test_named_choice_calls_that_tool(onnx_model):
    turn = generate_with_tools(onnx_model, ASK, TOOLS, tool_choice="get_weather", max_tokens=80)
    assert [c.name for c in turn.tool_calls] == ["get_weather"]


def test_none_choice_never_calls(onnx_model):
    turn = generate_with_tools(onnx_model, ASK, TOOLS, tool_choice="none", max_tokens=30)
    assert turn.tool_calls == [] and turn.text


def test_auto_choice_may_answer_without_a_call(onnx_model):
    turn = generate_with_tools(onnx_model, [{"role": "user", "content": "Hello! How are you today?"}], TOOLS,
                               tool_choice="auto", max_tokens=30)
    assert turn.tool_calls == [] and turn.text


def test_parallel_calls_when_enabled(onnx_model):
    turn = generate_with_tools(onnx_model, [{"role": "user", "content": "Weather in Oslo and in Rome?"}],
                               [get_weather.spec], tool_choice="required", parallel=True, max_tokens=120)
    assert len(turn.tool_calls) >= 1
    assert all(c.name == "get_weather" for c in turn.tool_calls)


def test_unknown_named_choice_is_refused(onnx_model):
    with pytest.raises(ConstraintError, match="tool_choice 'fly' names no tool"):
        generate_with_tools(onnx_model, ASK, TOOLS, tool_choice="fly")


def test_agent_stops_at_max_steps(onnx_model):
    agent = Agent(onnx_model, tools=[calculator], tool_choice="required", limits=AgentLimits(max_steps=3, max_tokens=60))
    result = agent.run("Keep computing 2+2.")
    assert result.status == "max_steps" and result.steps == 3
    assert [e.kind for e in result.trace] == ["model", "tool"] * 3


def test_agent_recovers_from_a_failing_tool(onnx_model):
    @tool
    def flaky(city: str) -> str:
        """Looks up a city; fails."""
        raise ToolError("service unavailable")

    agent = Agent(onnx_model, tools=[flaky], tool_choice="required", limits=AgentLimits(max_steps=2, max_tokens=60))
    result = agent.run("Look up Paris.")
    tool_events = [e for e in result.trace if e.kind == "tool"]
    assert len(tool_events) == 2 and not tool_events[0].tool_result.ok
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert result.messages[2].content == "ERROR: service unavailable"


def test_agent_answer_ends_the_run(onnx_model):
    agent = Agent(onnx_model, tools=[calculator], tool_choice="none", limits=AgentLimits(max_tokens=40))
    result = agent.run("Say hello.")
    assert result.status == "done" and result.steps == 1 and isinstance(result.output, str) and result.output


def test_agent_shows_the_calculators_value_and_answers_a_follow_up_from_history(onnx_model):
    agent = Agent(onnx_model, tools=[calculator, current_time], limits=AgentLimits(max_steps=3, max_tokens=64))
    first = agent.run("What is 17 * 23?")
    assert [(c.name, c.arguments) for e in first.trace for c in e.tool_calls] == [
        ("calculator", {"expression": "17 * 23"})]
    # The value is shown byte for byte, and no other digit is (none was returned).
    assert "391" in first.output and not re.search(r"\d", first.output.replace("391", "")), first.output
    history = [{"role": "user", "content": "What is 17 * 23?"}, {"role": "assistant", "content": first.output}]
    second = agent.run("And double it?", history=history)
    assert [(c.name, c.arguments) for e in second.trace for c in e.tool_calls] == [
        ("calculator", {"expression": "391 * 2"})]
    assert "782" in second.output, second.output


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_agent_compacts_history_that_does_not_fit(tiny_phi3_dirs):
    # The tiny model's window is 256 tokens: a tool with a short schema leaves room for turns.
    model = load_model(f"hf:{tiny_phi3_dirs[0]}")
    agent = Agent(model, tools=[add], tool_choice="required", limits=AgentLimits(max_steps=12, max_tokens=40))
    question = "Compute things, step by step, please. " * 3
    result = agent.run(question)
    assert any(e.kind == "compacted" for e in result.trace)
    assert result.status == "max_steps"
    assert result.messages[0].content == question  # the question is kept, old turns went


def test_agent_fails_clearly_when_even_the_system_prompt_does_not_fit(tiny_phi3_dirs):
    model = load_model(f"hf:{tiny_phi3_dirs[0]}")
    agent = Agent(model, system="word " * 300, tools=[calculator], limits=AgentLimits(max_tokens=40))
    with pytest.raises(PromptError, match="need more than the 216 tokens"):
        agent.run("hi")
