"""The router graph: split a request into subtasks and send each to the model role that suits it.

    START → plan → vision (one per attached image, when there are any) → route → mini | moe | docs → END

* plan: hard signals only, so a plain request costs nothing here: each attached image becomes a
  vision subtask; the text of the request is the one remaining subtask.
* vision: the vision role reads the image; with no vision model configured, OCR reads it and the
  trace says so (``fallback: ocr``).
* route: hard signals first — a tool that clearly fits the request (the tool selector's embedding
  score) means tools, documents close to it (nearest chunk's similarity) mean docs; otherwise one constrained
  ``Choice`` by the mini model among chat / tools / docs / reasoning (docs only with a folder), so
  a one-subtask request costs at most one short constrained decision.
* mini: an Agent with the read-only built-in tools; moe: the same Agent on the moe model when
  the tool selector finds a tool for the question, else step-by-step reasoning, then the final
  answer under a JSON Schema; docs: the docs-qa agent over the configured folder.

Text read from images is given to whichever node answers. Every node sees the thread's earlier
turns (the checkpoint keeps them), within its model's context window. Every node appends trace
events (node, model, tokens, tokens/s, milliseconds), which the CLI streams. The graph compiles with any
LangGraph checkpointer; `agents run assistant --thread NAME` uses the SQLite one.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Send, interrupt
from pydantic import BaseModel, Field
from slmflow.agents.agent import Agent, AgentLimits
from slmflow.agents.follow_ups import with_antecedent
from slmflow.runtime import Model, load_model
from slmflow.runtime.config import load_config
from slmflow.runtime.constraints import Choice
from slmflow.runtime.loop import Usage
from slmflow.runtime.messages import as_messages, drop_oldest_turns
from slmflow.runtime.protocol import GenerativeModel
from slmflow.runtime.queued import queued
from slmflow.runtime.tool_calling import ToolCall
from slmflow.runtime.tool_selection import ToolSelector
from slmflow.runtime.vision import load_images
from slmflow.tools import Tool, calculator, current_time
from slmflow.tools.rag.index import OnIndexProgress
from typing_extensions import TypedDict

ROUTES = ["chat", "tools", "docs", "reasoning"]
ROUTE_PROMPT = ("Pick the kind of work the request needs: chat (conversation, general knowledge), tools (current "
                "time, one arithmetic expression), docs (the user's own documents), reasoning (a word problem solved "
                "in steps). Answer with one word.")
# Worked examples shown before every request. They are the same each time, so the prefix cache
# keeps them and a routing decision prefills only the request itself (about 60 ms on CPU).
ROUTE_EXAMPLES = [
    ("Tell me a fun fact about cats.", "chat"), ("What is 17 * 23?", "tools"),
    ("What does my contract say about notice periods?", "docs"),
    ("A train leaves at 3 pm and travels 120 km at 60 km/h. When does it arrive?", "reasoning"),
    ("What time is it in Tokyo?", "tools"), ("Summarise the report in my files.", "docs"),
    ("If Ann has 3 apples and gives Bob 1, how many are left?", "reasoning"), ("How do I make pancakes?", "chat"),
]


def route_messages(request: str) -> list[dict]:
    messages = [{"role": "system", "content": ROUTE_PROMPT}]
    for example, route in ROUTE_EXAMPLES:
        messages += [{"role": "user", "content": example}, {"role": "assistant", "content": route}]
    return [*messages, {"role": "user", "content": request}]


# Bars for the hard signals (all-MiniLM-L6-v2 cosine), read off the routing suite's first 50 dev
# requests per category. Tool: best tool score of BFCL tool requests p10 0.55 (min 0.50), of
# arithmetic word problems max 0.47, of wikiqa questions max 0.46 (lower than the tool selector's
# 0.35 "may call" bar: routing away from the model needs a clear fit). Documents: nearest chunk of
# wikiqa questions p10 0.45 (median 0.62), of BFCL requests p90 0.44, of word problems max 0.40.
TOOL_MIN_SCORE = 0.5
DOCS_MIN_SIMILARITY = 0.45


class RouteSignals(BaseModel):
    """What the assistant knows about a request before asking a model: how well its best tool fits
    (the tool selector's embedding score) and how close its documents come (None: no folder)."""

    best_tool: str | None = None
    tool_score: float = 0.0
    docs_similarity: float | None = None

    @classmethod
    def measure(cls, request: str, selector: ToolSelector, tools: Sequence, docs=None,
                history: Sequence[dict] = ()) -> RouteSignals:
        """``docs``: a Retriever over the documents folder, or None; ``history``: the thread's earlier
        turns, so a follow-up ("When was it built?") is as close to the documents as its question."""
        selection = selector.select(request, tools)
        scores = selection.scores
        best = selection.triggered or max(scores, key=scores.get, default=None)
        # A tool's trigger pattern (an arithmetic expression, "what time is it") is a certain fit.
        score = 1.0 if selection.triggered else scores.get(best, 0.0) if best else 0.0
        return cls(best_tool=best, tool_score=score,
                   docs_similarity=docs.relevance(with_antecedent(request, history)) if docs is not None else None)


def decide_route(model: Model, request: str, signals: RouteSignals | None = None) -> tuple[str, Usage | None, str]:
    """The route, what deciding it cost (None when no model was asked) and why.

    Hard signals first: a tool that clearly fits means tools, documents close to the request mean
    docs. Otherwise one constrained Choice by ``model`` (the mini role) among the routes still open
    (docs only with a documents folder)."""
    if signals is not None:
        if signals.tool_score >= TOOL_MIN_SCORE:
            return "tools", None, f"tool {signals.best_tool} fits, score {signals.tool_score:.2f}"
        if signals.docs_similarity is not None and signals.docs_similarity >= DOCS_MIN_SIMILARITY:
            return "docs", None, f"documents match, similarity {signals.docs_similarity:.2f}"
    routes = [r for r in ROUTES if r != "docs" or signals is None or signals.docs_similarity is not None]
    response = model.generate(route_messages(request), constraint=Choice(routes), max_tokens=4)
    return response.text(), response.result().usage, "chosen by the model"


MOE_FINAL_TOKENS = 100
#: Model turns the tools agent takes per request (a call, its answer, and two to spare).
AGENT_STEPS = 4


class FinalAnswer(BaseModel):
    """The moe node's last word, generated under this schema after its free-form reasoning."""

    answer: str = Field(max_length=80)  # at most 80 tokens, so it always closes within max_tokens


class GraphLimits(BaseModel):
    """Caps per graph run; a run that reaches one stops with what it has and says so."""

    max_tokens: int = Field(2048, ge=1, description="generated tokens over all nodes")
    max_steps: int = Field(12, ge=1, description="LangGraph super-steps (its recursion limit)")


class TraceEvent(BaseModel):
    node: str
    model: str = ""
    tokens: int = 0
    #: Of ``tokens``, those the constraint forced (jump-forward) rather than the model chose.
    forced: int = 0
    #: The decode rate over the tokens the model chose (Usage.sampled_tokens_per_s).
    tokens_per_s: float = 0.0
    ms: float = 0.0
    note: str = ""


class AgentProgress(TypedDict, total=False):
    """Where the tools agent of the current request stands, kept in the checkpoint between its
    model, approval and tool nodes (empty when no agent is running)."""

    role: str  # the model role it runs on: mini, or moe when a tool fits a reasoning request
    messages: list[dict]  # its working conversation: system, history, request, turns, tool results
    step: int  # model turns taken
    calls: list[dict]  # the calls of its last turn, not yet run
    approved: list[bool]  # the user's answer per call, once the approve node has asked
    called: list[str]  # the tools run so far, for the trace


class AssistantState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    images: list[str]
    image_texts: Annotated[list[str], operator.add]
    route: str
    agent: AgentProgress
    trace: Annotated[list[dict], operator.add]
    tokens_used: Annotated[int, operator.add]


def _event(node: str, model: Model | None, started: float, usage: Usage | None = None, tokens: int = 0,
           note: str = "") -> dict:
    return TraceEvent(node=node, model=str(model.spec) if model else "",
                      tokens=usage.completion_tokens if usage else tokens,
                      forced=usage.forced_tokens if usage else 0,
                      tokens_per_s=round(usage.sampled_tokens_per_s, 1) if usage else 0.0,
                      ms=round((time.perf_counter() - started) * 1000, 1), note=note).model_dump()


def _request(state: AssistantState) -> str:
    return next(m.content for m in reversed(state["messages"]) if m.type == "human")


def _history(state: AssistantState) -> list[dict]:
    """The thread's earlier user and assistant turns (the checkpoint keeps them), for any node."""
    return [{"role": {"human": "user", "ai": "assistant"}[m.type], "content": m.content}
            for m in state["messages"][:-1] if m.type in ("human", "ai")]


def _ask_user(tool: Tool, call: ToolCall) -> bool:
    """Pause the graph (a LangGraph interrupt, saved by the checkpointer) until the user answers.
    On resume LangGraph re-runs the node and ``interrupt`` returns the user's answer, so it is
    called only from the approve node, which does nothing else: replaying it runs no tool."""
    answer = interrupt({"tool": tool.name, "arguments": call.arguments, "question": f"run {tool.name}?"})
    return answer is True or str(answer).strip().lower() in ("y", "yes", "true")


def _with_image_text(state: AssistantState, question: str) -> str:
    texts = state.get("image_texts") or []
    if not texts:
        return question
    return "Text of the attached document:\n" + "\n---\n".join(texts) + f"\n\nRequest: {question}"


class AssistantGraph:
    """Builds the router graph over the configured roles (see the module docstring)."""

    def __init__(self, docs_folder: str | Path | None = None, limits: GraphLimits | None = None,
                 tools: Sequence[Tool] = (), allow_mutating_tools: bool = False,
                 models: Mapping[str, GenerativeModel] | None = None) -> None:
        """``models``: a model per role (mini, moe) to use instead of the configured ones."""
        self.docs_folder = docs_folder
        self.models = dict(models or {})
        if not {"mini", "moe"} <= self.models.keys():
            load_config()  # a role naming a missing model fails now, not at the first node that runs it
        self.limits = limits or GraphLimits()
        self.tools = [calculator, current_time, *tools]
        self.allow_mutating = allow_mutating_tools
        self._selector: ToolSelector | None = None  # one per graph: tool embeddings are computed once
        self._docs = None

    # --- nodes -----------------------------------------------------------------------------------

    def plan(self, state: AssistantState) -> dict:
        load_images(state.get("images") or [])  # a missing or undecodable image fails before any model runs
        return {"trace": [TraceEvent(node="plan", note=f"{len(state.get('images') or [])} image(s), 1 question")
                          .model_dump()]}

    def fan_out(self, state: AssistantState) -> list[Send] | str:
        images = state.get("images") or []
        return [Send("vision", {"image": path}) for path in images] if images else "route"

    def vision(self, task: dict) -> dict:
        from slmflow.graphs.vision import read_image

        started = time.perf_counter()
        text, model, usage, note = read_image(task["image"])
        return {"image_texts": [text], "trace": [_event("vision", model, started, usage, note=note)],
                "tokens_used": usage.completion_tokens if usage else 0}

    def route(self, state: AssistantState) -> dict:
        started = time.perf_counter()
        model = self._model("mini")
        request = _request(state)
        signals = RouteSignals.measure(request, self._tool_selector(), self.tools,
                                       self.docs_qa().retriever if self.docs_folder else None, _history(state))
        route, usage, why = decide_route(model, request, signals)
        return {"route": route, "trace": [_event("route", model if usage else None, started, usage,
                                                 note=f"{route} ({why})")],
                "tokens_used": usage.completion_tokens if usage else 0}

    def _tool_selector(self) -> ToolSelector:
        if self._selector is None:
            self._selector = ToolSelector()
        return self._selector

    def docs_qa(self, on_progress: OnIndexProgress | None = None):
        """The docs-qa agent over ``docs_folder``, its index brought up to date the first time it is
        asked for: by :meth:`build`, so no node of a running graph indexes a folder."""
        from slmflow.agents.docs_qa import DocsQA

        if self._docs is None:
            self._docs = DocsQA(self.docs_folder, self._model("mini"))
            self._docs.update_index(on_progress=on_progress)
        return self._docs

    def _model(self, role: str) -> GenerativeModel:
        """The role's model, seen through its worker (runtime/queued.py), as every node uses it."""
        return queued(self.models[role] if role in self.models else load_model(role=role))

    def pick(self, state: AssistantState) -> Literal["mini", "moe", "docs"]:
        """The node after route: reasoning goes to moe, unless a read-only tool fits it (the
        calculator for "what do 14 pens at 3 EUR cost, 14 * 3"), when the tools agent runs it on
        the moe model; docs to docs; the rest to the tools agent on mini."""
        route = state["route"]
        if route == "reasoning":
            question = _with_image_text(state, _request(state))
            return "mini" if self._tool_selector().select(question, [t.spec for t in self.tools]).allowed else "moe"
        if route == "docs" and self.docs_folder is not None:
            return "docs"
        return "mini"

    def _budget(self, state: AssistantState) -> int:
        return max(1, self.limits.max_tokens - (state.get("tokens_used") or 0))

    def _agent(self, role: str, state: AssistantState) -> Agent:
        return Agent(self._model(role), tools=self.tools, allow_mutating_tools=self.allow_mutating,
                     tool_selector=self._tool_selector(),
                     limits=AgentLimits(max_steps=AGENT_STEPS, max_tokens=min(256, self._budget(state))))

    # The tools agent as three nodes: mini (one model turn), approve (asks the user about calls
    # that need it) and tools (runs the calls). An approval pauses the graph between nodes, so a
    # resumed thread replays only the approve node, never a tool that already ran.

    def mini(self, state: AssistantState) -> dict:
        """One model turn of the tools agent: the request's first (from the thread's history and
        the request), or the next after tool results."""
        started = time.perf_counter()
        progress = state.get("agent") or {}
        role = progress.get("role") or ("moe" if state.get("route") == "reasoning" else "mini")
        agent = self._agent(role, state)
        if progress.get("messages"):
            messages, step = as_messages(progress["messages"]), progress["step"] + 1
        else:
            messages, step = agent.start(_with_image_text(state, _request(state)), _history(state)), 1
        called = list(progress.get("called") or [])
        taken = agent.step(messages, step)
        usage = Usage.combined([e.usage for e in taken.events if e.usage])
        event = partial(_event, role, agent.model, started, usage)
        if taken.done or step >= AGENT_STEPS:  # at the last step a call is not run: no turn would read it
            status = "done" if taken.done else "max_steps"
            note = f"status {status}" + (f", tools: {', '.join(called)}" if called else "")
            return {"messages": [AIMessage(content=str(taken.output or ""))], "agent": {},
                    "trace": [event(note=note)], "tokens_used": usage.completion_tokens}
        calls = [c.model_dump() for c in taken.calls]
        note = f"calls {', '.join(c.name for c in taken.calls)}" if taken.calls else "call cut off"
        return {"agent": {"role": role, "messages": [m.model_dump() for m in messages], "step": step,
                          "calls": calls, "approved": [], "called": called},
                "trace": [event(note=note)], "tokens_used": usage.completion_tokens}

    def after_model(self, state: AssistantState) -> Literal["approve", "tools", "mini", "__end__"]:
        progress = state.get("agent") or {}
        if not progress:
            return END
        calls = progress.get("calls") or []
        if not calls:  # a call cut off by max_tokens: the model is told and tries again
            return "mini"
        tools = {t.name: t for t in self.tools}
        return "approve" if any(tools.get(c["name"]) and tools[c["name"]].needs_approval for c in calls) else "tools"

    def approve(self, state: AssistantState) -> dict:
        """Ask the user about each call whose tool needs approval (an interrupt per call); runs
        nothing, so LangGraph may replay it on resume."""
        progress = state["agent"]
        tools = {t.name: t for t in self.tools}
        answers = []
        for raw in progress["calls"]:
            call = ToolCall.model_validate(raw)
            tool = tools.get(call.name)
            answers.append(_ask_user(tool, call) if tool is not None and tool.needs_approval else True)
        return {"agent": {**progress, "approved": answers}}

    def tools_node(self, state: AssistantState) -> dict:
        """Run the last turn's calls, approved ones only among those that need approval; their
        results join the agent's conversation for its next turn."""
        started = time.perf_counter()
        progress = state["agent"]
        agent = self._agent(progress["role"], state)
        approved = progress.get("approved") or [True] * len(progress["calls"])
        messages = list(progress["messages"])
        notes, called = [], list(progress.get("called") or [])
        for raw, ok in zip(progress["calls"], approved, strict=True):
            call = ToolCall.model_validate(raw)
            result = agent.registry.call(call, lambda _tool, _call, ok=ok: ok)
            messages.append(result.as_message())
            notes.append(f"{call.name}: {'ok' if result.ok else 'error'}")
            called.append(call.name)
        return {"agent": {**progress, "messages": messages, "calls": [], "approved": [], "called": called},
                "trace": [_event("tools", None, started, note="; ".join(notes))]}

    def moe(self, state: AssistantState) -> dict:
        started = time.perf_counter()
        model = self._model("moe")
        question = _with_image_text(state, _request(state))
        # The thread's earlier turns come first, so "and double it" can be worked out from them;
        # the oldest go first when they and both replies would not fit the context window.
        asked = as_messages([*_history(state), {"role": "user", "content": question + "\nThink step by step."}])
        budget = min(256, self._budget(state))
        dropped, _ = drop_oldest_turns(
            asked, lambda kept: model.count_tokens(kept) + budget + MOE_FINAL_TOKENS <= model.context_length)
        steps = model.generate(asked, max_tokens=budget)
        reasoning = steps.text()

        final = model.generate([*asked, {"role": "assistant", "content": reasoning},
                                {"role": "user", "content": "Now give only the final answer."}],
                               output=FinalAnswer, max_tokens=MOE_FINAL_TOKENS)
        usage = steps.result().usage
        note = "reasoned, then a constrained final answer" + (f"; dropped the {dropped} oldest messages to fit"
                                                              if dropped else "")
        return {"messages": [AIMessage(content=final.answer)],
                "trace": [_event("moe", model, started, usage, note=note)],
                "tokens_used": usage.completion_tokens}

    def docs(self, state: AssistantState) -> dict:
        started = time.perf_counter()
        answer = self.docs_qa().ask(_request(state), history=_history(state))
        # The rendered answer (answer, quote, place) is what a reader sees; the answer alone, its
        # citations and whether it was found travel beside it, for code (and evals) to check.
        grounded = {"answer": answer.answer, "citations": [s.path for s in answer.cited], "found": answer.found}
        return {"messages": [AIMessage(content=answer.render(), additional_kwargs={"docs_answer": grounded})],
                "trace": [_event("docs", self._docs.model, started, tokens=answer.completion_tokens,
                                 note=f"{len(answer.sources)} sources")],
                "tokens_used": answer.completion_tokens}

    # --- the graph -------------------------------------------------------------------------------

    def _add_agent(self, graph: StateGraph) -> None:
        graph.add_node("mini", self.mini)
        graph.add_node("approve", self.approve)
        graph.add_node("tools", self.tools_node)
        graph.add_conditional_edges("mini", self.after_model, ["approve", "tools", "mini", END])
        graph.add_edge("approve", "tools")
        graph.add_edge("tools", "mini")

    def build(self, checkpointer: Any = None, on_progress: OnIndexProgress | None = None):
        """The router graph. The docs folder, if any, is indexed here, before the first request
        (``on_progress`` is told how it goes), rather than inside the first route decision."""
        if self.docs_folder is not None:
            self.docs_qa(on_progress)
        graph = StateGraph(AssistantState)
        for name in ("plan", "vision", "route", "moe", "docs"):
            graph.add_node(name, getattr(self, name))
        self._add_agent(graph)
        graph.add_edge(START, "plan")
        graph.add_conditional_edges("plan", self.fan_out, ["vision", "route"])
        graph.add_edge("vision", "route")
        graph.add_conditional_edges("route", self.pick, ["mini", "moe", "docs"])
        for name in ("moe", "docs"):
            graph.add_edge(name, END)
        return graph.compile(checkpointer=checkpointer)

    def build_agent(self, checkpointer: Any = None):
        """The tools agent alone (mini ⇄ approve/tools), on the request's last user message."""
        graph = StateGraph(AssistantState)
        self._add_agent(graph)
        graph.add_edge(START, "mini")
        return graph.compile(checkpointer=checkpointer)
