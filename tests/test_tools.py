"""Tools: schemas from signatures, validation, timeouts, errors as results, and file confinement."""

from __future__ import annotations

import os
import re
import time

import pytest
from slmflow.runtime.tool_calling import ToolCall
from slmflow.tools import ToolRegistry, calculator, current_time, file_tools, tool


@tool
def add(a: int, b: int = 2) -> int:
    """Add two integers.

    Longer text that is not part of the description."""
    return a + b


def call(registry, name, **arguments):
    return registry.call(ToolCall(name=name, arguments=arguments))


def test_schema_and_description_come_from_the_signature_and_docstring():
    spec = add.spec
    assert spec.name == "add" and spec.description == "Add two integers."
    assert spec.parameters["properties"] == {"a": {"type": "integer"}, "b": {"default": 2, "type": "integer"}}
    assert spec.parameters["required"] == ["a"]
    assert spec.parameters["additionalProperties"] is False


def test_arguments_are_validated_before_the_call():
    registry = ToolRegistry([add])
    assert call(registry, "add", a=1).content == "3"
    bad = call(registry, "add", a="x")
    assert not bad.ok and "bad arguments for add: a" in bad.content
    assert "no tool named 'sub'" in call(registry, "sub", a=1).content
    assert not call(registry, "add", a=1, c=3).ok


def test_a_raising_tool_becomes_an_error_result():
    @tool
    def broken(x: int) -> int:
        """Always fails."""
        raise RuntimeError("disk on fire")

    result = call(ToolRegistry([broken]), "broken", x=1)
    assert not result.ok and "RuntimeError: disk on fire" in result.content


def test_a_slow_tool_times_out_as_an_error_result():
    @tool(timeout_s=0.3)
    def slow(x: int) -> int:
        """Sleeps."""
        time.sleep(3)
        return x

    start = time.perf_counter()
    result = call(ToolRegistry([slow]), "slow", x=1)
    assert not result.ok and "did not finish within 0.3 s" in result.content
    assert time.perf_counter() - start < 2


def test_async_tools_run():
    @tool
    async def double(x: int) -> int:
        """Doubles."""
        return 2 * x

    assert call(ToolRegistry([double]), "double", x=4).content == "8"


def test_mutating_tools_are_opt_in():
    @tool(mutates=True)
    def delete_everything() -> str:
        """Deletes."""
        return "gone"

    with pytest.raises(ValueError, match="allow_mutating=True"):
        ToolRegistry([delete_everything])
    assert ToolRegistry([delete_everything], allow_mutating=True)["delete_everything"].mutates


def test_calculator_is_safe_arithmetic():
    registry = ToolRegistry([calculator])
    assert call(registry, "calculator", expression="(2 + 3) * 4 ** 2").content == "80"
    for evil in ("__import__('os').system('ls')", "open('/etc/passwd')", "9 ** 9 ** 9", "1/0"):
        assert not call(registry, "calculator", expression=evil).ok


def test_current_time_and_bad_zone():
    registry = ToolRegistry([current_time])
    assert call(registry, "current_time", timezone="Europe/Paris").content[:2] == "20"
    assert "unknown time zone" in call(registry, "current_time", timezone="Mars/Olympus").content


@pytest.fixture
def sandbox(tmp_path):
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("hello")
    (root / "big.txt").write_text("x" * 2000)
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    os.symlink(tmp_path, root / "escape")
    return ToolRegistry(file_tools(root, max_bytes=1000))


def test_read_file_inside_the_root(sandbox):
    assert call(sandbox, "read_file", path="docs/a.txt").content == "hello"
    assert call(sandbox, "list_files", path="docs").content == '["docs/a.txt"]'


@pytest.mark.parametrize("path, message", [
    ("../secret.txt", "'..' may not leave the folder"),
    ("/etc/passwd", "absolute path '/etc/passwd' refused"),
    ("link.txt", "links outside the folder"),
    ("escape/secret.txt", "links outside the folder"),
    ("big.txt", "over the 1,000-byte limit"),
    ("latin1.txt", "is not UTF-8 text"),
    ("nope.txt", "is not a file"),
])
def test_read_file_refusals(sandbox, path, message):
    result = call(sandbox, "read_file", path=path)
    assert not result.ok and message in result.content


def test_list_files_hides_links_out_of_the_root(sandbox):
    listed = call(sandbox, "list_files").content
    assert "link.txt" not in listed and "escape" not in listed and "big.txt" in listed


def test_file_tools_offer_only_paths_that_exist_inside_the_root(sandbox):
    from slmflow.runtime.tool_calling import narrowed

    specs = {spec.name: narrowed(spec, []) for spec in sandbox.specs}
    assert specs["read_file"].parameters["properties"]["path"] == {
        "enum": ["big.txt", "docs/a.txt", "latin1.txt"]}  # not link.txt or escape/…, which leave it
    assert specs["list_files"].parameters["properties"]["path"] == {"enum": [".", "docs"]}
    assert "choices" not in specs["read_file"].model_dump()  # never sent to a model or an engine


@pytest.mark.parametrize("request_text, expressions", [
    ("What is 17 * 23?", ["17 * 23"]), ("What is (12 + 7) * 3?", ["(12 + 7) * 3"]),
    ("Compute 144 / 12.", ["144 / 12"]), ("What is 12% of 250?", ["12% of 250"]),
    ("How much is 15 plus 27?", ["15 + 27"]), ("What is 1,200 divided by 4?", ["1200 / 4"]),
    ("What is 2 ** 10 and 3 * 3?", ["2 ** 10", "3 * 3"]),
    ("What happened on 2026-12-03?", []), ("Call 555-1234.", []), ("Tell me about the 1990s.", []),
])
def test_expressions_are_read_from_the_request(request_text, expressions):
    from slmflow.tools.arithmetic import expressions_in

    assert expressions_in(request_text) == expressions


@pytest.mark.parametrize("follow_up, expression", [
    ("And double it?", "42 * 2"), ("Now add 5 to that.", "42 + 5"), ("And minus 1?", "42 - 1"),
    ("Multiply that by 2.", "42 * 2"), ("And half of it?", "42 / 2"), ("Times 10?", "42 * 10"),
    ("Subtract 5 from that.", "42 - 5"), ("And squared?", "42 ** 2"), ("10% of it?", "10% of 42"),
    ("Double the recipe for pancakes.", None), ("Add milk to that.", None), ("Add 2 eggs to the list.", None),
])
def test_a_follow_up_works_on_the_previous_result(follow_up, expression):
    from slmflow.runtime.messages import as_messages
    from slmflow.tools.arithmetic import expression_choices

    messages = as_messages([{"role": "user", "content": "What is 6 * 7?"},
                            {"role": "assistant", "content": "6 * 7 is 42."},
                            {"role": "user", "content": follow_up}])
    assert expression_choices(messages) == {"expression": [expression] if expression else []}
    triggered = re.search(calculator.triggers, follow_up, re.IGNORECASE) is not None
    assert triggered is (expression is not None), follow_up


def test_a_follow_up_without_an_earlier_number_leaves_the_expression_free():
    from slmflow.runtime.messages import as_messages
    from slmflow.runtime.tool_calling import narrowed
    from slmflow.tools.arithmetic import expression_choices

    messages = as_messages([{"role": "user", "content": "And double it?"}])
    assert expression_choices(messages) == {"expression": []}
    assert narrowed(calculator.spec, messages).parameters == calculator.spec.parameters
