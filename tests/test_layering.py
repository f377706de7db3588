"""The package's import graph: no module imports another in a cycle, and the runtime imports
nothing above it. Imports inside functions count too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_PACKAGE = {"tests", "bench", "examples", "evals-out"}


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in NOT_PACKAGE or any(p.startswith(".") for p in parts):
            continue
        modules[".".join(("slmflow", *parts)).removesuffix(".__init__")] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Each module and the package modules it imports (``from pkg import mod`` names ``pkg.mod``)."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slmflow"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("slmflow")}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_in_a_cycle():
    assert cycles(import_graph()) == []


def test_the_runtime_imports_nothing_above_it():
    above = ("slmflow.agents", "slmflow.tools", "slmflow.graphs", "slmflow.evals", "slmflow.serve", "slmflow.cli")
    leaks = {(m, d) for m, deps in import_graph().items() if m.startswith("slmflow.runtime")
             for d in deps if d.startswith(above)}
    assert leaks == set()


NO_TORCH_RUN = """
import json, sys
from slmflow.runtime import load_model
from slmflow.runtime.constraints import JsonSchema
model = load_model("embedded")
text = model.generate("Name a colour.", max_tokens=8).text()
schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}, "required": ["name"]}
reply = model.generate("A JSON name, please.", max_tokens=24, constraint=JsonSchema(schema)).text()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"torch": "torch" in sys.modules, "text": text, "reply": reply,
                  "peak_mb": int(status["VmHWM"].split()[0]) / 1024}))
"""


def test_greedy_and_constrained_onnx_generation_never_import_torch(onnx_model):
    """The ONNX path's logits stay numpy (runtime/backends/base.py): greedy decoding, JSON
    constraints and the tokenizer need no torch, whose libraries alone hold ~190 MB resident."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", NO_TORCH_RUN], capture_output=True, text=True, timeout=300,
                          check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False
    assert seen["text"].strip() and json.loads(seen["reply"])["name"]
    assert seen["peak_mb"] < 400
