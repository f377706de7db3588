"""Built-in tools. All are read-only; the file tools are confined to the folder they were given."""

from __future__ import annotations

import ast
import datetime as dt
import operator
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field
from slmflow.tools.base import Tool, ToolError, tool

MAX_READ_BYTES = 1_000_000
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
        full = (self.root / path).resolve()
        if full != self.root and self.root not in full.parents:
            raise ToolError(f"path '{relative}' refused: it links outside the folder")
        return full


def file_tools(root: str | Path, max_bytes: int = MAX_READ_BYTES) -> list[Tool]:
    """``list_files`` and ``read_file`` confined to ``root``."""
    folder = Folder(root)

    @tool
    def list_files(path: str = ".") -> list[str]:
        """List the files and folders under a folder (relative to the root), folders ending in '/'."""
        target = folder.resolve(path)
        if not target.is_dir():
            raise ToolError(f"'{path}' is not a folder")
        entries = []
        for child in sorted(target.iterdir())[:MAX_LISTED]:
            try:
                rel = child.resolve().relative_to(folder.root)
            except ValueError:
                continue  # a link out of the root is not shown
            entries.append(f"{rel}/" if child.is_dir() else str(rel))
        return entries

    @tool
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


# Requests that certainly need a tool (ToolSpec.triggers): two numbers joined by an operator, or a
# percentage of a number; the current time or date.
# "-", "/" and "x" count as operators only with spaces around them, so dates ("2026-12-03",
# "12/25/2026"), phone numbers and sizes ("1920x1080") are not sums.
ARITHMETIC = (r"\d\s*(?:[+*^×]|\*\*)\s*\(?\s*-?\d|"
              r"\d\s+(?:-|/|x|plus|minus|times|divided by|multiplied by)\s+\(?\s*-?\d|"
              r"\d\s*(?:%|percent)\s*of\s*\d|\bsquare root of\s*\d")
TIME_NOW = (r"\bwhat(?:'s| is)? the (?:current )?(?:time|date|day)\b|\bwhat time is it\b|\btoday'?s date\b|"
            r"\bcurrent (?:time|date)\b|\b(?:time|date) (?:is it )?now\b|\bwhat day is (?:it|today)\b")
_PERCENT_OF = re.compile(r"(\d+(?:\.\d+)?)\s*(?:%|percent)\s*of\s*")


# Numbers, operators and "of" only, and short: left free, a small model's expression runs on
# ("12.125, 12.125, ...") until the call is cut off at its token limit.
Expression = Annotated[str, Field(max_length=40, pattern=r"^[-+*/%^()., 0-9×]+(of[-+*/%^()., 0-9×]+)?$")]


@tool(triggers=ARITHMETIC)
def calculator(expression: Expression) -> float | int:
    """Math calculator: compute the numeric result of one arithmetic expression such as (12 + 7) * 3
    (+ - * / // % ** ^ and parentheses; "12% of 250" is 12 / 100 * 250)."""
    if len(expression) > 200:
        raise ToolError("expression longer than 200 characters")
    text = _PERCENT_OF.sub(r"(\1 / 100) * ", expression).replace("×", "*").replace("^", "**")
    try:
        # Small models often close an argument with a stray comma; "1 * 2," is not meant as a tuple.
        tree = ast.parse(text.strip().rstrip(",;").strip(), mode="eval")
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
