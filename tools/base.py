"""Tools: typed Python functions an agent can call.

``@tool`` turns a function into a :class:`Tool`: the name is the function's, the description its
docstring's first paragraph, the JSON Schema comes from the signature through pydantic. Calls are
validated before they run, run under hard limits, and every failure comes back as a
:class:`ToolResult` with ``ok=False`` the model can read and recover from, never an exception
that ends the agent.

The limits hold whatever the tool does: a call runs on a daemon thread of its own (sync or
``async def``), so one that blocks past its timeout is abandoned and cannot keep the process from
exiting; ``sys.exit()`` or any other ``BaseException`` inside a tool is reported, not propagated;
a result longer than :data:`MAX_RESULT_CHARS` is cut with a note the model reads, so a huge
result cannot overflow the context and make the model call the tool again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from slmflow.runtime.messages import Message
from slmflow.runtime.tool_calling import TOOL_ERROR_PREFIX, ToolCall, ToolSpec

#: The most characters of a tool's result the model is shown; the rest is cut with a note.
MAX_RESULT_CHARS = 20_000


class ToolError(Exception):
    """Raised inside a tool to report a problem to the model (the message is what it sees)."""


class ToolResult(BaseModel):
    call_id: str
    name: str
    ok: bool
    content: str

    def as_message(self) -> dict:
        return {"role": "tool", "content": self.content if self.ok else TOOL_ERROR_PREFIX + self.content}


class Tool(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    description: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    #: Tools that change anything (write files, send messages) are off unless the user opts in.
    mutates: bool = False
    #: A person must approve each call (used by graphs that can interrupt).
    needs_approval: bool = False
    timeout_s: float = 30.0
    #: See :attr:`ToolSpec.triggers`: requests this pattern matches go to this tool.
    triggers: str | None = None
    #: See :attr:`ToolSpec.choices`: the values the arguments may take in a conversation.
    choices: Callable[[Sequence[Message]], dict[str, list]] | None = None

    @property
    def spec(self) -> ToolSpec:
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return ToolSpec(name=self.name, description=self.description, parameters=schema, triggers=self.triggers,
                        choices=self.choices)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def tool(fn: Callable | None = None, *, name: str | None = None, mutates: bool = False,
         needs_approval: bool = False, timeout_s: float = 30.0, triggers: str | None = None,
         choices: Callable[[Sequence[Message]], dict[str, list]] | None = None):
    """Decorate a typed function (sync or async) to make it a :class:`Tool`. ``triggers``: a
    regular expression for requests that certainly need this tool (see :attr:`ToolSpec.triggers`);
    ``choices``: the values its arguments may take in a conversation (:attr:`ToolSpec.choices`)."""

    def wrap(f: Callable) -> Tool:
        fields = {}
        # eval_str: annotations written as strings (``from __future__ import annotations``) are
        # resolved in the function's own module, so Annotated constraints reach the schema.
        for pname, param in inspect.signature(f, eval_str=True).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {f.__name__}: *args/**kwargs cannot be described to a model")
            annotation = param.annotation if param.annotation is not inspect.Parameter.empty else Any
            default = param.default if param.default is not inspect.Parameter.empty else ...
            fields[pname] = (annotation, default)
        args_model = create_model(f"{f.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
        doc = inspect.getdoc(f) or ""
        return Tool(name=name or f.__name__, description=doc.split("\n\n")[0].strip(), fn=f,
                    args_model=args_model, mutates=mutates, needs_approval=needs_approval, timeout_s=timeout_s,
                    triggers=triggers, choices=choices)

    return wrap(fn) if fn is not None else wrap


def _truncated(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return (text[:limit] + f"\n[result truncated: the first {limit:,} of {len(text):,} characters are shown; "
            "ask for a smaller part instead of calling again with the same arguments]")


class _Timeout(Exception):
    pass


class _Exited(Exception):
    """The tool called ``sys.exit()``: stopped at the registry, not at the process."""


def _run_limited(fn: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float) -> Any:
    """``fn(**kwargs)`` on a daemon thread, waited for at most ``timeout_s``. A coroutine function
    runs in its own event loop on that thread, so a blocking ``async def`` times out too."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            value = fn(**kwargs)
            outcome["value"] = asyncio.run(value) if inspect.iscoroutine(value) else value
        except BaseException as err:  # SystemExit and KeyboardInterrupt included: reported, not raised
            outcome["error"] = err

    worker = threading.Thread(target=target, name=f"tool-{getattr(fn, '__name__', 'call')}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _Timeout
    error = outcome.get("error")
    if isinstance(error, SystemExit):
        raise _Exited(error.code)
    if error is not None and not isinstance(error, Exception):
        raise RuntimeError(f"{type(error).__name__} inside the tool") from error
    if error is not None:
        raise error
    return outcome["value"]


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, default=str)
    except TypeError:
        return str(value)


class ToolRegistry:
    """The tools an agent may call, by name."""

    def __init__(self, tools: Iterable[Tool] = (), allow_mutating: bool = False) -> None:
        self._tools: dict[str, Tool] = {}
        self.allow_mutating = allow_mutating
        for t in tools:
            self.register(t)

    def register(self, t: Tool) -> None:
        if t.mutates and not self.allow_mutating:
            raise ValueError(f"tool '{t.name}' changes things; pass allow_mutating=True to opt in")
        if t.name in self._tools:
            raise ValueError(f"two tools are named '{t.name}'")
        self._tools[t.name] = t

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    def call(self, call: ToolCall, approve: Callable[[Tool, ToolCall], bool] | None = None) -> ToolResult:
        """Validate and run one call; every failure becomes an error result. A tool marked
        ``needs_approval`` runs only when ``approve`` says yes (with no ``approve``, it never runs)."""
        def fail(message: str) -> ToolResult:
            return ToolResult(call_id=call.id, name=call.name, ok=False, content=message)

        t = self._tools.get(call.name)
        if t is None:
            return fail(f"no tool named '{call.name}'; available: {', '.join(self._tools)}")
        try:
            args = t.args_model.model_validate(call.arguments)
        except ValidationError as err:
            first = err.errors()[0]
            return fail(f"bad arguments for {call.name}: {'.'.join(map(str, first['loc']))}: {first['msg']}")
        kwargs = {k: getattr(args, k) for k in t.args_model.model_fields}
        if t.needs_approval and (approve is None or not approve(t, call)):
            return fail(f"{call.name} needs the user's approval, which was not given; do not retry it")
        try:
            value = _run_limited(t.fn, kwargs, t.timeout_s)
        except _Timeout:
            return fail(f"{call.name} did not finish within {t.timeout_s:g} s")
        except ToolError as err:
            return fail(str(err))
        except _Exited as err:
            return fail(f"{call.name} tried to exit the process (code {err.args[0]!r}); the call was stopped")
        except Exception as err:  # a tool's bug must not end the agent: the model sees it instead
            return fail(f"{call.name} raised {type(err).__name__}: {err}")
        return ToolResult(call_id=call.id, name=call.name, ok=True, content=_truncated(_render(value)))
