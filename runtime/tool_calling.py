"""Tool calling under a grammar: the model either answers in text or emits tool calls, and every
call names a real tool with arguments that validate against that tool's schema.

Output format (the Hermes / Qwen2.5 convention, native to their chat templates, and ours for models
whose template defines none)::

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

``tool_choice`` is enforced by the grammar, not by the prompt: ``auto`` allows text or calls,
``required`` allows only calls, ``none`` only text, and a tool's name allows only a call to it.
With ``parallel=True`` several calls may follow one another. The tools are shown to the model
through the chat template when the template renders a ``tools`` list; otherwise slmflow writes them
into the system message.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, Field
from slmflow.runtime.constraints import (
    JSON_OPTIONS,
    ConstraintError,
    Grammar,
    _bounded,
    _closed_objects,
    substring_lexeme,
)
from slmflow.runtime.errors import PromptError
from slmflow.runtime.loop import GenerationResult
from slmflow.runtime.messages import Message, as_messages
from slmflow.runtime.sampling import SamplingParams
from slmflow.runtime.tool_selection import ToolSelection, ToolSelector

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
#: How a failed call's result starts in the conversation (tools/base.py, ToolResult.as_message).
TOOL_ERROR_PREFIX = "ERROR: "
_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)


class ToolSpec(BaseModel):
    """What the model is told about a tool: its name, what it does, and its JSON Schema."""

    name: str
    description: str = ""
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    #: A regular expression (case-insensitive): a request it matches is given this tool, whatever
    #: the embedding selector scores (arithmetic → calculator). Not sent to the model or an engine.
    triggers: str | None = Field(None, exclude=True)
    #: The values each argument may take in this conversation (see :func:`narrowed`): a function
    #: of the messages returning {argument: [values]}; an empty list leaves the argument free.
    choices: Callable[[Sequence[Message]], dict[str, list]] | None = Field(None, exclude=True)

    def openai_format(self) -> dict:
        return {"type": "function", "function": self.model_dump()}


class ToolCall(BaseModel):
    id: str = Field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])
    name: str
    arguments: dict


ToolChoice = Literal["auto", "required", "none"] | str


class ToolTurn(BaseModel):
    """One model turn: an answer (``text``) or tool calls, with the raw generation."""

    text: str
    tool_calls: list[ToolCall]
    raw: str
    result: GenerationResult
    selection: ToolSelection | None = None


def _call_schema(tool: ToolSpec) -> dict:
    return {
        "x-guidance": JSON_OPTIONS,
        "type": "object",
        # Closed objects: a call can invent no parameter the tool does not declare.
        "properties": {"name": {"const": tool.name}, "arguments": _bounded(_closed_objects(tool.parameters))},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def narrowed(tool: ToolSpec, messages: Sequence[Message]) -> ToolSpec:
    """``tool`` with each argument its ``choices`` name held to those values (a JSON Schema enum),
    so a call copies them instead of writing its own: the expression the request wrote for the
    calculator, a path that exists for the file tools. The model still picks among several."""
    if tool.choices is None:
        return tool
    chosen = {name: values for name, values in tool.choices(messages).items() if values}
    properties = tool.parameters.get("properties", {})
    if not any(name in properties for name in chosen):
        return tool
    parameters = {**tool.parameters, "properties": {
        name: {"enum": list(dict.fromkeys(chosen[name]))} if name in chosen else schema
        for name, schema in properties.items()}}
    return tool.model_copy(update={"parameters": parameters})


def tool_call_grammar(tools: Sequence[ToolSpec], choice: ToolChoice = "auto", parallel: bool = False) -> Grammar:
    """The Lark grammar (with llguidance's ``%json`` schemas) that enforces ``choice``."""
    names = [t.name for t in tools]
    if choice not in ("auto", "required", "none") and choice not in names:
        raise ConstraintError(f"tool_choice '{choice}' names no tool", f"use auto, required, none or one of {names}")
    if choice in ("auto", "required") and not tools:
        raise ConstraintError(f"tool_choice '{choice}' needs at least one tool", "pass tools or use tool_choice='none'")
    text_rule = "text: /[^<\\s][\\s\\S]*/"
    if choice == "none":
        return Grammar(f"start: text\n{text_rule}\n")
    allowed = [t for t in tools if choice in ("auto", "required") or t.name == choice]
    rules = [f'call_{i}: "{CALL_OPEN}" %json {json.dumps(_call_schema(t))} "{CALL_CLOSE}"' for i, t in enumerate(allowed)]
    call = "call: " + " | ".join(f"call_{i}" for i in range(len(allowed)))
    calls = 'calls: call ("\\n" call)*' if parallel else "calls: call"
    start = "start: text | calls" if choice == "auto" else "start: calls"
    return Grammar("\n".join([start, calls, call, *rules, text_rule]) + "\n")


# A value in a tool result: a run with at least one digit (numbers, dates, times, ids), with the
# punctuation that belongs inside it ("1,234.5", "2026-12-03T06:46:29+00:00", "12:30").
_VALUE = re.compile(r"[-+$€£]?[\w:/.,+-]*\d[\w:/.,+-]*")
_MAX_NAME = 80  # longest string of a JSON result taken whole as a value (names, paths, short spans)
_MAX_VALUES = 300
_MARKUP = re.compile(r"<[^<>\n]{1,200}>")  # an HTML/XML tag: "<h1>" holds no value


def _values_in(content: str) -> list[str]:
    """The digit runs of a result (outside markup tags), and its short strings: the whole of a
    short one-line text, the short strings of JSON (file names, places)."""
    values = [m.group().rstrip(".,:") for m in _VALUE.finditer(_MARKUP.sub(" ", content))]
    try:
        data = json.loads(content)
    except ValueError:  # plain text: a short one-line result ("Sunny in Oslo") is a value whole
        short = 0 < len(content) <= _MAX_NAME and content.strip() == content and "\n" not in content
        return [content, *values] if short else values
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += item.values()
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str) and 0 < len(item) <= _MAX_NAME and item.strip() == item and "\n" not in item:
            values.append(item)
    return values


def listed_items(content: str) -> list[str]:
    """The items of a tool result that is a JSON list of strings (file names, search hits), or
    none when it is not one."""
    try:
        data = json.loads(content)
    except ValueError:
        return []
    return data if isinstance(data, list) and all(isinstance(item, str) for item in data) else []


def listing_grammar(items: Sequence[str]) -> Grammar:
    """An answer that shows a list result whole: a lead in words ending at a colon (so the lexer
    knows where the list starts), then every item verbatim, in order ("a, b and c"), at most
    MAX_LISTED_ITEMS of them and a count of the rest. Left to pick items, a small model repeats
    some, leaves others out and misspells them between ("eiffel.txt")."""
    shown = list(items[:MAX_LISTED_ITEMS])
    if len(items) > len(shown):
        shown.append(f"{len(items) - len(shown)} more")
    listed = ", ".join(shown[:-1]) + (" and " if len(shown) > 1 else "") + shown[-1]
    return Grammar(f'start: text\ntext: (LEAD ": ")? {json.dumps(listed, ensure_ascii=False)} "."\n'
                   f"LEAD: /[^<0-9\\n`:]{{1,{LEAD_CHARS}}}/\n")


def tool_result_values(messages: Sequence[Message]) -> list[str]:
    """The values in the tool results since the last user message, longest first, each once: what
    an answer after those results copies (see :func:`answer_grammar`)."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    found: dict[str, None] = {}
    for m in messages[last_user + 1:]:
        if m.role == "tool" and not m.content.startswith(TOOL_ERROR_PREFIX):
            found.update(dict.fromkeys(v for v in _values_in(m.content) if v))
    return sorted(found, key=len, reverse=True)[:_MAX_VALUES]


# How far the answer may run before its first value, and between values: a value comes soon
# ("Here's a list of tools with their descriptions and examples: ..." is 73 characters of
# nothing), and the words between values cannot loop on.
LEAD_CHARS, BETWEEN_CHARS = 80, 48
# Around values only words (letters, spaces, light punctuation; the lead may hold full stops):
# no stop between values for a sentence to run on past ("number.To calculate it ..."), no
# symbols to loop on ("↏↏↏").
WORDS = r"""[\p{L}\p{M} ,;:'"’()%&\/+=-]"""
MAX_LISTED_ITEMS = 20
PROSE_CHARS = 200  # a tool result this long, not JSON, is prose to quote (a file's text)
MAX_QUOTED_CHARS = 20_000  # how much of a long file an answer may quote from (its beginning)


def answer_grammar(values: Sequence[str]) -> Grammar:
    """One sentence in words after tool results that shows at least one of ``values`` verbatim,
    and in which every digit is copied from a tool result: free text has no digits, and the
    values stand in it as literals. A small model cannot then rewrite "391" as "333" or a
    timestamp as another one, nor leave the result out ("You can use the following code ..."):
    what it shows that a tool returned is byte-identical to it, and it shows something. The
    sentence ends with its last value (after one, small models go on to invent: "24.0 is a
    decimal number in JavaScript"), so with one value that is all it says after the lead; the
    words before and between values are short (LEAD_CHARS, BETWEEN_CHARS); no
    line breaks and no code fences, which they open after a timestamp."""
    if not values:
        raise ConstraintError("answer_grammar needs at least one tool value", "use the plain words rule without any")
    literals = " | ".join(json.dumps(v, ensure_ascii=False) for v in values)
    if not all(any(c.isdigit() for c in v) for v in values):
        # A value in letters ("Sunny in Oslo") reads as words too, so a lead in words could start
        # with it and run on ("Sunny in Oslo is a fun fact trivia game ..."): the values alone.
        return Grammar(f'start: text\ntext: value ((", " | " and ") value)* END?\n'
                       f"END: /[.!?]/\nvalue: {literals}\n")
    between = f"MID: /{WORDS}{{1,{BETWEEN_CHARS}}}/\n" if len(values) > 1 else ""
    more = " (MID value)*" if len(values) > 1 else ""  # one value: nothing to say after it
    return Grammar(f"start: text\ntext: LEAD? value{more} END?\n"
                   f"LEAD: /({WORDS}|[.!?]){{1,{LEAD_CHARS}}}/\n{between}END: /[.!?]/\n"
                   f"value: {literals}\n")


def passages(content: str) -> list[str]:
    """The paragraphs of a prose tool result (a file's text), each with its runs of whitespace
    made one space and markup tags cut out, so a quote is the file's words as they stand, not
    its line breaks or tags; none when it is not prose (JSON, one short line). Only the first
    MAX_QUOTED_CHARS are offered."""
    try:
        json.loads(content)
        return []
    except ValueError:
        pass
    if len(content) < PROSE_CHARS or content.startswith(TOOL_ERROR_PREFIX):
        return []
    pieces = (" ".join(p.split()) for p in re.split(rf"\n\s*\n|{_MARKUP.pattern}", content[:MAX_QUOTED_CHARS]))
    return [p for p in pieces if len(p.split()) >= 3]


def quoting_grammar(paragraphs: Sequence[str]) -> Grammar:
    """An answer that is a verbatim piece of one of ``paragraphs`` (llguidance substring lexemes,
    as :class:`~slmflow.runtime.constraints.Quote`): what a read file says, shown as it says it."""
    rules = "\n".join(f"P{i}: {substring_lexeme(p)}" for i, p in enumerate(paragraphs))
    return Grammar("start: text\ntext: " + " | ".join(f"P{i}" for i in range(len(paragraphs))) + f"\n{rules}\n")


def answer_after_tools(messages: Sequence[Message]) -> Grammar | None:
    """The grammar of an answer after tool results (None: the plain words rule): a quote of a
    prose result, the items of a list result, or words around the values of any other."""
    last = messages[-1] if messages else None
    if last is None or last.role != "tool":
        return None
    paragraphs = passages(last.content)
    if paragraphs:
        return quoting_grammar(paragraphs)
    items = listed_items(last.content)
    if items:
        return listing_grammar(items)
    values = tool_result_values(messages)
    return answer_grammar(values) if values else None


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Tool calls in generated text (empty when the text is an answer).

    A call repeated word for word in one turn is kept once: running it twice could only repeat its
    effect, and small models given room for parallel calls tend to loop on the same one.
    """
    if not text.lstrip().startswith(CALL_OPEN):
        return []
    calls, seen = [], set()
    for body in _CALL_RE.findall(text):
        data = json.loads(body)
        key = json.dumps(data, sort_keys=True)
        if key not in seen:
            seen.add(key)
            calls.append(ToolCall(name=data["name"], arguments=data.get("arguments", {})))
    return calls


def tools_system_text(tools: Sequence[ToolSpec]) -> str:
    """How the tools are described when the chat template does not render them itself."""
    lines = ["You can call these tools. To call one, reply with exactly",
             f'{CALL_OPEN}{{"name": "<tool name>", "arguments": {{...}}}}{CALL_CLOSE}',
             "and nothing else. If no tool fits, answer the user directly.", "Tools:"]
    lines += [json.dumps(t.model_dump()) for t in tools]
    return "\n".join(lines)


def template_renders_tools(tokenizer) -> bool:
    probe = [{"role": "user", "content": "x"}]
    tool = ToolSpec(name="probe_tool_name", description="probe").openai_format()
    try:
        text = tokenizer.hf.apply_chat_template(probe, tools=[tool], tokenize=False)
    except Exception:  # templates that reject the tools argument
        return False
    return "probe_tool_name" in text


def tool_prompt(model, messages, tools: Sequence[ToolSpec]) -> list[int]:
    """Prompt tokens with the tools shown to the model (native template or our system text)."""
    messages = as_messages(messages)
    if not tools:
        return model.tokenizer.apply_chat_template(messages)
    if template_renders_tools(model.tokenizer):
        dicts = [m.model_dump(exclude_none=True) for m in messages]
        return list(model.tokenizer.hf.apply_chat_template(
            dicts, tools=[t.openai_format() for t in tools], add_generation_prompt=True, tokenize=True,
            return_dict=False))
    text = tools_system_text(tools)
    if messages and messages[0].role == "system":
        messages = [Message(role="system", content=messages[0].content + "\n\n" + text), *messages[1:]]
    else:
        messages = [Message(role="system", content=text), *messages]
    return model.tokenizer.apply_chat_template(messages)


def generate_with_tools(
    model,
    messages,
    tools: Sequence[ToolSpec],
    *,
    tool_choice: ToolChoice = "auto",
    parallel: bool = False,
    max_tokens: int = 512,
    sampling: SamplingParams | None = None,
    selector: ToolSelector | None = None,
) -> ToolTurn:
    """One constrained model turn over ``messages`` with ``tools`` available.

    With a ``selector`` and ``tool_choice="auto"``, a turn that answers a user message is decided by
    the selector (tool_selection.py): a call to one of the tools it allows, or words when it allows
    none. A turn that follows tool results is an answer in words (small models left free there
    repeat the call they just made), held to copying from those results (:func:`answer_after_tools`).
    A call's arguments are held to the values its tool's ``choices`` give (:func:`narrowed`).
    """
    messages = as_messages(messages)
    selection, allowed = None, list(tools)
    if selector is not None and tool_choice == "auto" and tools and messages[-1].role == "user":
        selection = selector.select(messages[-1].content, tools)
        allowed = [t for t in tools if t.name in selection.allowed]
        tool_choice = "required" if allowed else "none"
    elif selector is not None and tool_choice == "auto" and messages[-1].role == "tool":
        tool_choice = "none"
    callable_tools = allowed if tool_choice == "required" else list(tools)
    if tool_choice != "none":  # an answer in words calls nothing: no arguments to narrow
        callable_tools = [narrowed(t, messages) for t in callable_tools]
    turn = model.tool_turn(messages, tools, tool_choice, parallel, max_tokens, sampling, callable_tools=callable_tools)
    return turn.model_copy(update={"selection": selection})


def local_tool_turn(model, messages, tools: Sequence[ToolSpec], tool_choice: ToolChoice = "auto",
                    parallel: bool = False, max_tokens: int = 512, sampling: SamplingParams | None = None, *,
                    callable_tools: Sequence[ToolSpec] | None = None) -> ToolTurn:
    """A local model's tool turn (``model`` has ``tokenizer``, ``context_length`` and a
    ``generate`` that takes token ids): ``tools`` shown in the prompt, the reply held to the call
    grammar over ``callable_tools`` (default: ``tools``) for ``tool_choice``, and a turn in words after
    tool results to copying from them (:func:`answer_after_tools`)."""
    messages = as_messages(messages)
    grammar = tool_call_grammar(tools if callable_tools is None else callable_tools, tool_choice, parallel)
    after_tools = answer_after_tools(messages) if tool_choice == "none" else None
    if after_tools is not None:  # else the plain words rule above stands
        grammar = after_tools
    ids = tool_prompt(model, messages, tools)
    if len(ids) + 1 > model.context_length:
        raise PromptError(f"the conversation has {len(ids)} tokens, more than the context window of "
                          f"{model.context_length}", "shorten it or let the agent compact its history")
    # An answer in words that starts imitating a call ends there: it cannot be one.
    stop = (CALL_OPEN,) if grammar.text.startswith("start: text\n") else ()
    result = model.generate(ids, constraint=grammar, max_tokens=max_tokens, sampling=sampling, stop=stop).result()
    calls = parse_tool_calls(result.text)
    return ToolTurn(text="" if calls else result.text, tool_calls=calls, raw=result.text, result=result)
