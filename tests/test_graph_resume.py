"""Approve, then resume: the tools agent pauses between its nodes, so a resumed thread runs each
approved call once, and exactly the call the user was shown (issue #25)."""

from __future__ import annotations

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from slmflow.graphs.assistant import AssistantGraph
from slmflow.runtime.endpoints.base import calls_as_text
from slmflow.runtime.loop import GenerationResult, Usage
from slmflow.runtime.tool_calling import ToolCall, ToolTurn
from slmflow.tools import tool


def _result(text: str) -> GenerationResult:
    return GenerationResult(text=text, token_ids=[1, 2], finish_reason="stop", model="scripted",
                            usage=Usage(prompt_tokens=10, completion_tokens=2, time_to_first_token_s=0.01,
                                        decode_tokens_per_s=100.0, total_s=0.02))


class NoteTakingModel:
    """A model that decides its tool turns itself (as a server does, through ``tool_turn``): to
    a request it answers with two note-writing calls whose texts change every time it is asked,
    as a sampled model's would; after the tool results it answers in words."""

    spec = "scripted"
    context_length = 4096

    def __init__(self) -> None:
        self.turns = 0

    def count_tokens(self, messages, tools=()) -> int:
        return sum(len(str(getattr(m, "content", m)).split()) for m in messages) + 50 * len(tools)

    def generate(self, prompt, **_):
        raise AssertionError("this model only takes tool turns")

    def tool_turn(self, messages, tools, tool_choice="auto", parallel=False, max_tokens=512, sampling=None, *,
                  callable_tools=None):
        self.turns += 1
        if messages[-1].role == "tool" or tool_choice == "none":
            return ToolTurn(text="Both notes are saved.", tool_calls=[], raw="Both notes are saved.",
                            result=_result("Both notes are saved."))
        calls = [ToolCall(name="write_note", arguments={"text": f"{item} (draft {self.turns})"})
                 for item in ("milk", "eggs")]
        return ToolTurn(text="", tool_calls=calls, raw=calls_as_text(calls), result=_result(calls_as_text(calls)))


def _note_writer(written: list[str]):
    """A write tool that counts its runs in ``written``; it needs the user's approval."""

    @tool(mutates=True, needs_approval=True)
    def write_note(text: str) -> str:
        """Write a note with the given text to the notes file."""
        written.append(text)
        return "saved"

    return write_note


def _agent_graph(written: list[str], model: NoteTakingModel):
    return AssistantGraph(tools=[_note_writer(written)], allow_mutating_tools=True, models={"mini": model}) \
        .build_agent(checkpointer=InMemorySaver())


def test_an_approved_write_runs_once_and_as_shown_after_resume():
    written: list[str] = []
    model = NoteTakingModel()
    graph = _agent_graph(written, model)
    config = {"configurable": {"thread_id": "notes"}}
    graph.invoke({"messages": [("user", "Write a note with the text: buy milk and eggs")]}, config)

    asked = [i.value for t in graph.get_state(config).tasks for i in t.interrupts]
    assert [a["arguments"]["text"] for a in asked] == ["milk (draft 1)"]
    graph.invoke(Command(resume="yes"), config)  # the first call approved; the second is asked next
    asked = [i.value for t in graph.get_state(config).tasks for i in t.interrupts]
    assert [a["arguments"]["text"] for a in asked] == ["eggs (draft 1)"]
    assert written == []  # nothing runs until every call of the turn has its answer
    out = graph.invoke(Command(resume="yes"), config)

    assert written == ["milk (draft 1)", "eggs (draft 1)"]  # each once, each the call the user saw
    assert model.turns == 2  # the call turn and the answer; resuming asked the model nothing
    assert out["messages"][-1].content == "Both notes are saved."
    assert [e["node"] for e in out["trace"]] == ["mini", "tools", "mini"]
    assert out["trace"][-1]["note"] == "status done, tools: write_note, write_note"
    assert not graph.get_state(config).next


def test_a_declined_write_does_not_run_and_the_model_is_told():
    written: list[str] = []
    graph = _agent_graph(written, NoteTakingModel())
    config = {"configurable": {"thread_id": "declined"}}
    graph.invoke({"messages": [("user", "Write a note with the text: buy milk and eggs")]}, config)
    graph.invoke(Command(resume="no"), config)
    out = graph.invoke(Command(resume="no"), config)
    assert written == []
    assert out["trace"][1] == {**out["trace"][1], "node": "tools", "note": "write_note: error; write_note: error"}
