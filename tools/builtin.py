"""Built-in tools. All are read-only; the file tools are confined to the folder they were given."""

from __future__ import annotations

import ast
import datetime as dt
import operator
import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field
from slmflow.tools.arithmetic import (
    ARITHMETIC,
    FOLLOW_UP,
    expression_choices,
    python_form,
)
from slmflow.tools.base import Tool, ToolError, tool

MAX_READ_BYTES = 1_000_000
# A request naming a text file ("Read notes.txt", "open eiffel-tower.md") goes to read_file
# (ToolSpec.triggers); the extensions are the text formats read_file can read.
NAMES_A_TEXT_FILE = (r"(?<![\w.-])[\w.-]*\w\.(?:txt|md|markdown|rst|html?|csv|tsv|json|jsonl|ya?ml|toml|xml|ini|cfg|"
                     r"log|py)\b")
MAX_LISTED = 500


class Folder:
    """A root folder that paths from the model are resolved inside, and never outside."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve(strict=True)
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root} is not a folder")

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        if path.is_absolute():
            raise ToolError(f"absolute path '{relative}' refused: give a path relative to the folder")
        if ".." in path.parts:
            raise ToolError(f"path '{relative}' refused: '..' may not leave the folder")
        try:
            full = (self.root / path).resolve()
        except (RuntimeError, OSError):  # a symlink loop (RuntimeError up to 3.12, OSError after)
            raise ToolError(f"path '{relative}' refused: it is a symbolic link loop") from None
        if full != self.root and self.root not in full.parents:
            raise ToolError(f"path '{relative}' refused: it links outside the folder")
        return full

    def entries(self, limit: int = MAX_LISTED) -> tuple[list[str], list[str]]:
        """The folders ("." first) and files under the root, relative and in POSIX form, each list
        empty when the root holds more than ``limit`` entries (too many to offer as choices).
        Hidden folders (.git, .cache) are not entered and the walk stops at the limit: this runs
        on every tool call turn, so a large tree costs ``limit`` entries, not its size."""
        found: list[tuple[str, bool]] = []
        for top, dirs, names in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            here = Path(top).relative_to(self.root)
            for name, is_dir in [*((d, True) for d in dirs), *((n, False) for n in names)]:
                if name.startswith("."):
                    continue  # hidden files are not offered
                relative = (here / name).as_posix()
                try:
                    self.resolve(relative)
                except ToolError:
                    continue  # a link out of the root
                found.append((relative, is_dir))
                if len(found) > limit:
                    return [], []
        found.sort(key=lambda entry: Path(entry[0]).parts)
        return ["."] + [p for p, is_dir in found if is_dir], [p for p, is_dir in found if not is_dir]


def file_tools(root: str | Path, max_bytes: int = MAX_READ_BYTES) -> list[Tool]:
    """``list_files`` and ``read_file`` confined to ``root``. A call's path is one that exists
    when the call is made (``choices``), so a small model cannot write a path into the void
    ("list_files.txt.csv.csv..."); folders of more than MAX_LISTED entries leave it free."""
    folder = Folder(root)

    @tool(choices=lambda messages: {"path": folder.entries()[0]})
    def list_files(path: str = ".") -> list[str]:
        """List the files and folders under a folder (relative to the root), folders ending in '/'."""
        target = folder.resolve(path)
        if not target.is_dir():
            raise ToolError(f"'{path}' is not a folder")
        entries = []
        for child in sorted(target.iterdir())[:MAX_LISTED]:
            try:
                rel = child.resolve().relative_to(folder.root)
            except (ValueError, RuntimeError, OSError):
                continue  # a link out of the root, or a link loop, is not shown
            entries.append(f"{rel}/" if child.is_dir() else str(rel))
        return entries

    def files_named(messages) -> dict[str, list[str]]:
        """The files the request names, when it names any that exist; else every file."""
        files = folder.entries()[1]
        request = next((m.content for m in reversed(messages) if m.role == "user"), "")
        named = [f for f in files if re.search(rf"(?<![\w/.-]){re.escape(f)}(?![\w/-])", request)
                 or re.search(rf"(?<![\w/.-]){re.escape(Path(f).name)}(?![\w/-])", request)]
        return {"path": named or files}

    @tool(triggers=NAMES_A_TEXT_FILE, choices=files_named)
    def read_file(path: str) -> str:
        """Read a UTF-8 text file (relative to the root)."""
        target = folder.resolve(path)
        if not target.is_file():
            raise ToolError(f"'{path}' is not a file")
        size = target.stat().st_size
        if size > max_bytes:
            raise ToolError(f"'{path}' is {size:,} bytes, over the {max_bytes:,}-byte limit for reading")
        try:
            return target.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"'{path}' is not UTF-8 text") from None

    return [list_files, read_file]


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
        ast.USub: operator.neg, ast.UAdd: operator.pos}


def _evaluate(node):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 100 or abs(left) > 1e6):
            raise ToolError("exponent too large")
        return _OPS[type(node.op)](left, right)
    raise ToolError(f"only numbers and + - * / // % ** ( ) are allowed, not {type(node).__name__.lower()}")


# Requests that certainly need the clock (ToolSpec.triggers): the current time or date.
TIME_NOW = (r"\bwhat(?:'s| is)? the (?:current )?(?:time|date|day)\b|\bwhat time is it\b|\btoday'?s date\b|"
            r"\bcurrent (?:time|date)\b|\b(?:time|date) (?:is it )?now\b|\bwhat day is (?:it|today)\b|"
            r"\b(?:what|which) day of the week\b|\btell me the (?:time|date)\b")


# Numbers, operators and "of" only, and short: left free, a small model's expression runs on
# ("12.125, 12.125, ...") until the call is cut off at its token limit.
Expression = Annotated[str, Field(max_length=40, pattern=r"^[-+*/%^()., 0-9×]+(of[-+*/%^()., 0-9×]+)?$")]


@tool(triggers=f"{ARITHMETIC}|{FOLLOW_UP}", choices=expression_choices)
def calculator(expression: Expression) -> float | int:
    """Math calculator: compute the numeric result of one arithmetic expression such as (12 + 7) * 3
    (+ - * / // % ** ^ and parentheses; "12% of 250" is 12 / 100 * 250)."""
    if len(expression) > 200:
        raise ToolError("expression longer than 200 characters")
    try:
        tree = ast.parse(python_form(expression), mode="eval")
    except SyntaxError:
        raise ToolError(f"cannot parse '{expression}'") from None
    try:
        return _evaluate(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None


@tool(triggers=TIME_NOW)
def current_time(timezone: str = "UTC") -> str:
    """The current date and time in ISO 8601, in UTC or an IANA time zone such as 'Europe/Paris'."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone '{timezone}'") from None
    return dt.datetime.now(zone).isoformat(timespec="seconds")
