"""Running graphs from the command line: user graph files, SQLite threads, approvals, live events.

A thread (``--thread NAME``) is a LangGraph checkpoint thread in ``<cache>/threads.sqlite``; each
super-step is committed in one SQLite transaction, so a process killed at any moment leaves the
last complete step, and the next run with the same thread continues from it (an unfinished run is
resumed before a new question is taken).
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langgraph.types import Command
from rich.console import Console
from slmflow.runtime.embedded import cache_root
from slmflow.runtime.errors import SlmflowError


class GraphFileError(SlmflowError):
    """A user graph file that cannot be loaded."""


def load_user_graph(target: str):
    """``path/to/file.py:name`` → the compiled graph (a StateGraph is compiled without a checkpointer)."""
    path_text, _, name = target.rpartition(":")
    if not path_text or not name:
        raise GraphFileError(f"'{target}' is not FILE.py:NAME", "name the file and the graph variable, e.g. my_graph.py:graph")
    path = Path(path_text)
    if not path.is_file():
        raise GraphFileError(f"graph file {path} does not exist", "check the path")
    spec = importlib.util.spec_from_file_location(f"slmflow_user_graph_{uuid.uuid4().hex[:8]}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        raise GraphFileError(f"{path}:{err.lineno}: syntax error: {err.msg}", "fix the file and run again") from None
    except Exception as err:  # the user's module may raise anything at import
        raise GraphFileError(f"{path} failed to import: {type(err).__name__}: {err}", "fix the file and run again") \
            from None
    graph = getattr(module, name, None)
    if graph is None:
        found = [k for k, v in vars(module).items() if hasattr(v, "invoke") or hasattr(v, "compile")]
        raise GraphFileError(f"{path} defines no '{name}'", f"graphs found there: {', '.join(found) or 'none'}")
    if hasattr(graph, "compile") and not hasattr(graph, "invoke"):
        graph = graph.compile()
    if not hasattr(graph, "stream"):
        raise GraphFileError(f"{path}:{name} is a {type(graph).__name__}, not a LangGraph graph",
                             "point to a StateGraph or a compiled graph")
    return graph


class ThreadStoreError(SlmflowError):
    """The thread store cannot be trusted: damaged, or emptied behind our back."""


def thread_store_path() -> Path:
    """Where named threads live by default: ``<cache>/threads.sqlite``."""
    return cache_root() / "threads.sqlite"


def sqlite_checkpointer(path: Path | None = None):
    """LangGraph's SQLite saver on ``path`` (default ``<cache>/threads.sqlite``), checked first: a
    damaged store (``PRAGMA quick_check``) or one truncated to 0 bytes is refused by name, since
    going on would start the user's threads from nothing without a word."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = path or thread_store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = f"move it aside (mv {path} {path}.damaged) to start fresh threads; nothing else uses it"
    if path.exists() and path.stat().st_size == 0:  # SQLite never leaves an empty file once set up
        raise ThreadStoreError(f"the thread store {path} is empty (0 bytes): the threads it held are gone", aside)
    try:
        connection = sqlite3.connect(str(path), check_same_thread=False)
        problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(problems[0])
        saver = SqliteSaver(connection)
        saver.setup()
    except sqlite3.DatabaseError as err:
        raise ThreadStoreError(f"the thread store {path} is damaged ({err})", aside) from None
    return saver


def thread_config(thread: str | None, max_steps: int) -> dict:
    return {"configurable": {"thread_id": thread or f"once-{uuid.uuid4().hex[:8]}"}, "recursion_limit": max_steps}


def _print_update(console: Console, node: str, update: Any) -> None:
    for event in (update or {}).get("trace", []) if isinstance(update, dict) else []:
        parts = [f"[bold]{event['node']}[/]"]
        if event.get("model"):
            parts.append(event["model"])
        if event.get("tokens"):
            forced = f" ({event['forced']} forced)" if event.get("forced") else ""
            parts.append(f"{event['tokens']} tokens{forced}" + (f" at {event['tokens_per_s']:.0f} tok/s"
                                                                 if event.get("tokens_per_s") else ""))
        parts.append(f"{event['ms']:.0f} ms")
        if event.get("note"):
            parts.append(event["note"])
        console.print("[dim]" + " · ".join(parts) + "[/]", highlight=False, soft_wrap=True)
    if not isinstance(update, dict) or "trace" not in update:
        console.print(f"[dim][bold]{node}[/] done[/]", highlight=False)


def stream_run(graph, inputs: Any, config: dict, console: Console,
               ask: Callable[[dict], str] | None = None) -> dict:
    """Run to the end, printing each node's events; interrupts (tool approvals) are put to ``ask``
    (default: a y/N prompt) and the run resumes with the answer. Returns the final state values."""
    if ask is None:  # without a terminal to ask on, approvals are declined
        ask = (lambda payload: console.input(f"[yellow]{payload.get('question', payload)}[/] [y/N] ")) \
            if sys.stdin.isatty() else (lambda payload: "no")
    pending: Any = inputs
    while True:
        # "sync": each step is committed before the next starts, so a kill loses at most the running step.
        for chunk in graph.stream(pending, config, stream_mode="updates", durability="sync"):
            for node, update in chunk.items():
                if node != "__interrupt__":
                    _print_update(console, node, update)
        state = graph.get_state(config)
        interrupts = [i for task in state.tasks for i in task.interrupts]
        if not interrupts:
            return state.values
        pending = Command(resume=ask(interrupts[0].value))


def unfinished(graph, config: dict) -> bool:
    """Whether the thread stopped mid-run (killed, or waiting on an approval)."""
    try:
        return bool(graph.get_state(config).next)
    except ValueError:  # a graph compiled without a checkpointer has no saved state
        return False
