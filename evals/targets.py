"""What a scenario file is run against: a target turns one case's input into a TargetOutput.

``--target`` names one of:

* ``FILE.py:NAME``: a LangGraph graph (a StateGraph is compiled) or a plain function of
  :class:`ScenarioInput` returning a string, a dict or a TargetOutput;
* ``assistant`` or ``assistant:FOLDER``: the router graph, with FOLDER as its documents;
* ``docs-qa:FOLDER`` (or ``docs-qa FOLDER``): the grounded docs-qa agent over FOLDER;
* ``agent`` or ``agent:FOLDER``: a tools agent with the read-only built-ins (file tools over FOLDER);
* ``model`` or ``model:SPEC``: the model alone.

Each target also has a ``fingerprint`` (what its output depends on besides the input: a file's
bytes, a folder's listing, a model spec) for the output cache.
"""

from __future__ import annotations

import abc
import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, model_validator
from slmflow.runtime.errors import SlmflowError


class ScenarioInput(BaseModel):
    """A case's input: a question, or a whole conversation; images and files (paths relative to
    the scenario file) go with its last user message."""

    question: str | None = None
    messages: list[dict] | None = None
    images: list[str] = []
    files: list[str] = []

    @model_validator(mode="after")
    def _one_of(self) -> ScenarioInput:
        if (self.question is None) == (self.messages is None):
            raise ValueError("give exactly one of question or messages")
        return self

    def conversation(self) -> list[dict]:
        """The messages the target sees; a file's text is attached to the last user message."""
        messages = [dict(m) for m in self.messages] if self.messages else [{"role": "user", "content": self.question}]
        if self.files:
            attached = "\n\n".join(f"File {Path(f).name}:\n{Path(f).read_text(encoding='utf-8', errors='replace')}"
                                   for f in self.files)
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{attached}"
        return messages

    def prompt_text(self) -> str:
        """The last user message: what a judge is told was asked."""
        return self.question if self.question is not None else str(self.messages[-1].get("content", ""))


class TargetOutput(BaseModel):
    answer: str
    tool_calls: list[dict] = []  # {name, arguments}
    citations: list[str] = []  # cited files, relative to the documents folder
    found: bool = True  # False: the target said it could not answer
    route: str | None = None  # the router graph's route
    tokens: int = 0
    latency_s: float = 0.0
    #: Served from the output cache (latency and tokens are the first run's).
    cached: bool = False


class TargetError(SlmflowError):
    """A --target that cannot be resolved."""


def _folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of every file: a changed document changes it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _timed(run: Callable[[], TargetOutput]) -> TargetOutput:
    start = time.perf_counter()
    out = run()
    return out.model_copy(update={"latency_s": time.perf_counter() - start})


class _Lazy(abc.ABC):
    """A target whose model or index loads in :meth:`prepare` (or its first case), so a run whose
    every output is cached loads nothing."""

    def __init__(self) -> None:
        self._ready = False
        self._lock = threading.Lock()

    def prepare(self, on_progress=None) -> None:
        with self._lock:
            if not self._ready:
                self._load(on_progress)
                self._ready = True

    @abc.abstractmethod
    def _load(self, on_progress) -> None: ...

    @abc.abstractmethod
    def _run(self, case: ScenarioInput) -> TargetOutput: ...

    def __call__(self, case: ScenarioInput) -> TargetOutput:
        self.prepare()
        return _timed(lambda: self._run(case))


class GraphTarget(_Lazy):
    """A LangGraph graph, streamed with ``stream_mode="updates"``: the answer is the last AI
    message (for the router graph's docs node, the answer alone, with its citations, from the
    message's ``docs_answer``); tool calls come from AI messages and from the router graph's agent;
    tokens from ``tokens_used``; the route from a ``route`` key."""

    def __init__(self, graph, fingerprint: str, build: Callable | None = None) -> None:
        """``build(on_progress)``: makes the graph in :meth:`prepare` instead (indexing its folder)."""
        super().__init__()
        self.graph = graph
        self.fingerprint = fingerprint
        self._build = build

    def _load(self, on_progress) -> None:
        if self.graph is None:
            self.graph = self._build(on_progress)

    def _run(self, case: ScenarioInput) -> TargetOutput:
        inputs: dict[str, Any] = {"messages": [(m["role"], m["content"]) for m in case.conversation()]}
        if case.images:
            inputs["images"] = case.images
        config = {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": 25}
        answer, calls, tokens, route, grounded = "", [], 0, None, {}
        for update in self.graph.stream(inputs, config, stream_mode="updates"):
            for values in update.values():
                if not isinstance(values, dict):
                    continue
                for message in values.get("messages") or []:
                    if getattr(message, "type", "") == "ai":
                        answer = message.content if isinstance(message.content, str) else str(message.content)
                        calls += [{"name": c["name"], "arguments": c["args"]} for c in message.tool_calls]
                        # the router graph's docs node: the answer alone, its citations, found or not
                        grounded = message.additional_kwargs.get("docs_answer") or {}
                calls += [{"name": c["name"], "arguments": c.get("arguments") or {}}
                          for c in (values.get("agent") or {}).get("calls") or []]
                tokens += values.get("tokens_used") or 0
                route = values.get("route", route)
        return TargetOutput(answer=grounded.get("answer", answer), tool_calls=calls, tokens=tokens, route=route,
                            citations=grounded.get("citations", []), found=grounded.get("found", True))


class DocsQATarget(_Lazy):
    """The grounded docs-qa agent over a folder; a case's ``files`` restrict retrieval to them."""

    def __init__(self, folder: Path, model_spec: str | None) -> None:
        super().__init__()
        if not folder.is_dir():
            raise TargetError(f"docs-qa folder {folder} does not exist", "name a folder of documents")
        self.folder, self.model_spec = folder, model_spec
        self.fingerprint = f"docs-qa:{_folder_fingerprint(folder)}:{model_spec or 'embedded'}"

    def _load(self, on_progress) -> None:
        from slmflow.agents.docs_qa import DocsQA

        self.qa = DocsQA(self.folder, self.model_spec)
        self.qa.update_index(on_progress=on_progress)

    def _run(self, case: ScenarioInput) -> TargetOutput:
        where = None
        if case.files:
            paths = [str(Path(f).resolve().relative_to(self.folder.resolve())) for f in case.files]
            where = {"path": {"$in": paths}}
        answer = self.qa.ask(case.prompt_text(), where=where, history=(case.messages or [])[:-1])
        return TargetOutput(answer=answer.answer, citations=[s.path for s in answer.cited], found=answer.found,
                            tokens=answer.completion_tokens)


class AgentTarget(_Lazy):
    """A tools agent with the read-only built-ins (and file tools over ``folder``)."""

    def __init__(self, folder: Path | None, model_spec: str | None) -> None:
        super().__init__()
        if folder is not None and not folder.is_dir():
            raise TargetError(f"agent folder {folder} does not exist", "name a folder for its file tools")
        self.folder, self.model_spec = folder, model_spec
        self.fingerprint = f"agent:{_folder_fingerprint(folder) if folder else ''}:{model_spec or 'embedded'}"

    def _load(self, on_progress) -> None:
        from slmflow.agents import Agent
        from slmflow.tools import calculator, current_time, file_tools

        tools = [calculator, current_time, *(file_tools(self.folder) if self.folder else [])]
        self.agent = Agent(self.model_spec, tools=tools)

    def _run(self, case: ScenarioInput) -> TargetOutput:
        conversation = case.conversation()
        result = self.agent.run(conversation[-1]["content"], history=conversation[:-1])
        calls = [{"name": c.name, "arguments": c.arguments} for e in result.trace for c in e.tool_calls]
        tokens = sum(e.usage.completion_tokens for e in result.trace if e.usage)
        return TargetOutput(answer=str(result.output or ""), tool_calls=calls, tokens=tokens)


class ModelTarget(_Lazy):
    """The model alone, on the case's conversation."""

    def __init__(self, model_spec: str | None) -> None:
        super().__init__()
        self.model_spec = model_spec
        self.fingerprint = f"model:{model_spec or 'embedded'}"

    def _load(self, on_progress) -> None:
        from slmflow.runtime.model import load_model

        self.model = load_model(self.model_spec)

    def _run(self, case: ScenarioInput) -> TargetOutput:
        result = self.model.generate(case.conversation(), max_tokens=256).result()
        return TargetOutput(answer=result.text, tokens=result.usage.completion_tokens)


class CallableTarget:
    """A user's function of a ScenarioInput; a str or dict it returns becomes a TargetOutput."""

    def __init__(self, function: Callable, fingerprint: str) -> None:
        self.function = function
        self.fingerprint = fingerprint

    def __call__(self, case: ScenarioInput) -> TargetOutput:
        return _timed(lambda: self._run(case))

    def _run(self, case: ScenarioInput) -> TargetOutput:
        out = self.function(case)
        if isinstance(out, TargetOutput):
            return out
        return TargetOutput(answer=out) if isinstance(out, str) else TargetOutput.model_validate(out)


def _file_target(text: str) -> GraphTarget | CallableTarget:
    import importlib.util

    path_text, _, name = text.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise TargetError(f"target file {path} does not exist", "check the path in --target FILE.py:NAME")
    fingerprint = f"file:{hashlib.sha256(path.read_bytes()).hexdigest()}:{name}"
    spec = importlib.util.spec_from_file_location(f"slmflow_target_{uuid.uuid4().hex[:8]}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's module may raise anything at import
        raise TargetError(f"{path} failed to import: {type(err).__name__}: {err}", "fix the file and run again") \
            from None
    obj = getattr(module, name, None)
    if obj is None:
        raise TargetError(f"{path} defines no '{name}'", "name a graph or a function defined in the file")
    if hasattr(obj, "compile") and not hasattr(obj, "stream"):
        obj = obj.compile()
    if hasattr(obj, "stream"):
        return GraphTarget(obj, fingerprint)
    if callable(obj):
        return CallableTarget(obj, fingerprint)
    raise TargetError(f"{path}:{name} is a {type(obj).__name__}", "point to a LangGraph graph or a function")


def _assistant(folder: str | None, model_spec: str | None, on_progress):
    """The router graph, built (its folder indexed) only once a case must run."""
    from slmflow.graphs.assistant import AssistantGraph
    from slmflow.runtime.model import load_model

    models = {"mini": load_model(model_spec), "moe": load_model(model_spec)} if model_spec else None
    return AssistantGraph(docs_folder=folder, models=models).build(on_progress=on_progress)


def resolve_target(text: str, model_spec: str | None = None):
    """The target ``text`` names (the module docstring); ``model_spec`` replaces the embedded
    default where the target loads a model."""
    kind, _, rest = text.replace(" ", ":", 1).partition(":") if not text.endswith(".py") else (text, "", "")
    if kind == "docs-qa":
        if not rest:
            raise TargetError("docs-qa needs a folder", "write --target docs-qa:FOLDER")
        return DocsQATarget(Path(rest), model_spec)
    if kind == "assistant":
        from slmflow.runtime.config import config_paths

        if rest and not Path(rest).is_dir():
            raise TargetError(f"assistant documents folder {rest} does not exist", "name a folder of documents")
        roles = model_spec or "".join(p.read_text(encoding="utf-8") for p in config_paths() if p.is_file())
        fingerprint = f"assistant:{_folder_fingerprint(Path(rest)) if rest else ''}:{roles}"
        return GraphTarget(None, fingerprint, build=lambda on_progress: _assistant(rest or None, model_spec,
                                                                                   on_progress))
    if kind == "agent":
        return AgentTarget(Path(rest) if rest else None, model_spec)
    if kind == "model":
        return ModelTarget(rest or model_spec)
    if ".py:" in text or text.endswith(".py"):
        if text.endswith(".py"):
            raise TargetError(f"'{text}' names no graph or function", "write --target FILE.py:NAME")
        return _file_target(text)
    raise TargetError(f"unknown target '{text}'",
                      "use FILE.py:NAME, assistant[:FOLDER], docs-qa:FOLDER, agent[:FOLDER] or model[:SPEC]")
