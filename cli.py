"""The ``agents`` command line.

User errors (a bad spec, a missing model, an empty prompt) end in one line on stderr and exit code
2, never a traceback; the message says what was wrong and what to do.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
import sqlite3
import sys
from functools import wraps
from typing import TYPE_CHECKING

import click
from slmflow.runtime.errors import SlmflowError
from slmflow.runtime.sampling_params import SamplingParams

if TYPE_CHECKING:
    from rich.console import Console

# Everything heavier than click (rich, torch, the backends, chromadb) is imported inside the
# command that needs it: `agents --help` and a mistyped flag answer at once.


@functools.cache
def err_console() -> Console:
    """The stderr console, made on first use."""
    from rich.console import Console

    return Console(stderr=True)


def _table(*columns: str):
    from rich.table import Table

    return Table(*columns)


def _print_table(table) -> None:
    from rich.console import Console

    Console().print(table)


def _sampling_options(func):
    """Add one ``--flag`` per SamplingParams field, so generate and chat stay in step with it."""
    for name, field in reversed(list(SamplingParams.model_fields.items())):
        flag = "--" + name.replace("_", "-")
        kind = int if field.annotation in (int, int | None) else float
        func = click.option(flag, name, type=kind, default=field.default, show_default=True,
                            help=field.description)(func)
    return func


def _model_options(func):
    func = click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
                        help="most new tokens")(func)
    func = click.option("--stop", multiple=True, help="stop string (repeatable); it is not emitted")(func)
    func = click.option("--system", default=None, help="system prompt")(func)
    func = click.option("--role", default=None, help="model role from slmflow.toml: mini, vision or moe")(func)
    func = click.option("--model", "model_spec", default=None,
                        help="model spec: embedded, hf:PATH, onnx:PATH, gguf:PATH, ollama:TAG, "
                             "openai:MODEL@URL (default: embedded)")(func)
    return _sampling_options(func)


def _user_errors(func):
    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SlmflowError as err:
            from rich.markup import escape

            # escaped: a hint such as "add a [roles] table" is text, not rich markup
            err_console().print(f"[bold red]error:[/] {escape(err.problem)}"
                                + (f" — {escape(err.hint)}" if err.hint else ""), highlight=False, soft_wrap=True)
            sys.exit(2)
    return wrapper


def _split_kwargs(kwargs: dict) -> tuple[SamplingParams, dict]:
    """The sampling flags as SamplingParams; a value it refuses is a user error naming the flag."""
    from pydantic import ValidationError

    values = {k: kwargs.pop(k) for k in list(kwargs) if k in SamplingParams.model_fields}
    try:
        return SamplingParams(**values), kwargs
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        flag = "--" + name.replace("_", "-")
        raise SlmflowError(f"{flag} {values.get(name)!r}: {first['msg'].lower()}",
                           f"see `agents generate --help` for what {flag} takes") from None


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log what the runtime does")
def main(verbose: bool) -> None:
    """slmflow: on-device assistants built from small language models."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@main.command()
@click.argument("prompt")
@_model_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (text, usage, finish reason)")
@click.option("--stats", is_flag=True, help="print usage and prefix-cache stats after the reply")
@_user_errors
def generate(prompt: str, as_json: bool, stats: bool, **kwargs) -> None:
    """Generate a reply to PROMPT, streaming it to the terminal."""
    from slmflow.runtime.model import load_model

    sampling, opts = _split_kwargs(kwargs)
    model = load_model(opts["model_spec"], role=opts["role"])
    response = model.generate(prompt, max_tokens=opts["max_tokens"], sampling=sampling,
                              stop=opts["stop"], system=opts["system"])
    if as_json:
        click.echo(response.result().model_dump_json(indent=2))
        return
    for delta in response:
        click.echo(delta, nl=False)
    click.echo()
    if stats:
        _print_stats(response.result())


def _print_stats(result) -> None:
    u, c = result.usage, result.cache
    err_console().print(
        f"[dim]{u.prompt_tokens} prompt tokens ({u.cached_tokens} from cache), {u.completion_tokens} generated, "
        f"first token {u.time_to_first_token_s * 1000:.0f} ms, {u.sampled_tokens_per_s:.1f} tok/s"
        + (f" ({u.forced_tokens} forced)" if u.forced_tokens else "") + ", "
        f"finish: {result.finish_reason} | cache: {c.hits} hits, {c.misses} misses, "
        f"{c.tokens_reused} tokens reused, {c.tokens_prefilled} prefilled, "
        f"{c.states_held} states / {c.bytes_held / 2**20:.1f} MiB held ({c.policy})[/]",
        highlight=False, soft_wrap=True,
    )


@main.command()
@_model_options
@click.option("--stats", is_flag=True, help="print usage and prefix-cache stats after each reply")
@_user_errors
def chat(stats: bool, **kwargs) -> None:
    """An interactive conversation; the history is kept between turns. Ctrl-D or /exit ends it."""
    from slmflow.runtime.messages import Message
    from slmflow.runtime.model import load_model

    sampling, opts = _split_kwargs(kwargs)
    model = load_model(opts["model_spec"], role=opts["role"])
    history: list[Message] = []
    if opts["system"]:
        history.append(Message(role="system", content=opts["system"]))
    err_console().print(f"[dim]chatting with {model.spec} — /exit or Ctrl-D to quit[/]")
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if not line.strip():
            continue
        history.append(Message(role="user", content=line))
        response = model.generate(history, max_tokens=opts["max_tokens"], sampling=sampling, stop=opts["stop"])
        for delta in response:
            click.echo(delta, nl=False)
        click.echo()
        if stats:
            _print_stats(response.result())
        history.append(Message(role="assistant", content=response.text()))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--rebuild", is_flag=True, help="convert the embedded model again (after a damaged-cache error)")
@_user_errors
def models(as_json: bool, rebuild: bool) -> None:
    """List the models slmflow knows, where they live and their state."""
    from slmflow.runtime import embedded
    from slmflow.runtime.config import Role, load_config

    if rebuild:
        embedded.rebuild()
    st = embedded.state()
    rows = [
        {"name": "embedded (GGUF)", "location": str(st.gguf) if st.gguf else "-",
         "state": "installed" if st.gguf else f"missing: {embedded.INSTALL_HINT}"},
        {"name": "embedded:transformers", "location": str(st.hf_dir),
         "state": "ready" if st.hf_ready else "converted on first use"},
        {"name": "embedded (onnx int4)", "location": str(st.onnx_dir),
         "state": "ready" if st.onnx_ready else "converted on first use"},
        {"name": "embedded:llamacpp", "location": str(st.gguf) if st.gguf else "-",
         "state": "ready (runs the GGUF)" if importlib.util.find_spec("llama_cpp")
         else "needs: pip install llama-cpp-python"},
    ]
    config = load_config()
    for role in Role:
        configured = getattr(config.roles, role.value)
        rows.append({"name": f"role {role.value}", "location": configured or "embedded",
                     "state": f"from {config.source}" if configured else "default (not configured)"})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = _table("model", "location", "state")
    for row in rows:
        table.add_row(row["name"], row["location"], row["state"])
    _print_table(table)


def _index_options(func):
    func = click.option("--index", "index_dir", type=click.Path(file_okay=False), default=None,
                        help="index folder (default: one per folder in the user cache)")(func)
    func = click.option("--index-url", default=None,
                        help="keep the index in a Chroma server (http://host:port) instead of a folder")(func)
    func = click.option("--include", multiple=True, help="only files matching this glob (repeatable)")(func)
    return click.option("--no-ocr", is_flag=True, help="skip images and scanned PDF pages")(func)


def _print_index_stats(stats) -> None:
    err_console().print(
        f"[dim]indexed {stats.files_embedded} files ({stats.chunks_added} chunks) in {stats.seconds:.1f} s, "
        f"{stats.files_unchanged} unchanged, {stats.files_removed} removed; {stats.chunks_total} chunks in the index"
        + (f"; {len(stats.warnings)} skipped" if stats.warnings else "") + "[/]", highlight=False, soft_wrap=True)
    from rich.markup import escape

    for warning in stats.warnings:  # file names may hold brackets: text, not markup
        err_console().print(f"[yellow]skipped[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for note in stats.notes:
        err_console().print(f"[dim]note: {escape(note)}[/]", highlight=False, soft_wrap=True)


def _questions(question: str | None, intro: str = "ask away"):
    """The one question given with -q, or lines typed at the prompt until /exit or Ctrl-D."""
    if question:
        yield question
        return
    err_console().print(f"[dim]{intro} — /exit or Ctrl-D to quit[/]")
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            return
        if line in ("/exit", "/quit"):
            return
        if line:
            yield line


@main.command("index")
@click.argument("folder", type=click.Path())
@_index_options
@_user_errors
def index_command(folder: str, index_dir: str | None, index_url: str | None, include: tuple[str, ...],
                  no_ocr: bool) -> None:
    """Index FOLDER for docs-qa (only new and changed files are embedded)."""
    from slmflow.progress_bars import index_progress_bar
    from slmflow.tools.rag.index import DocumentIndex

    index = DocumentIndex(folder, index_dir, index_url=index_url)
    with index_progress_bar() as shown:
        stats = index.update(include=list(include) or None, ocr=not no_ocr, on_progress=shown)
    _print_index_stats(stats)
    if stats.files_seen == 0:
        raise SlmflowError(f"{index.folder} has no files" + (f" matching {', '.join(include)}" if include else ""),
                           "add .txt .md .html .pdf .docx .csv .json files or images to it"
                           + (", or change --include" if include else ""))
    err_console().print(f"[dim]index: {index.location}[/]", highlight=False)


class _RunGroup(click.Group):
    """``agents run NAME`` for the built-in graphs, and ``agents run FILE.py:GRAPH`` for a user's."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and ":" in name:
            return _user_graph_command(name)
        return command


@main.group("run", cls=_RunGroup)
def run_group() -> None:
    """Run a graph: assistant (the router), docs-qa FOLDER, or FILE.py:GRAPH (your own LangGraph graph)."""


def _thread_options(func):
    func = click.option("--thread", default=None, help="conversation name; resumes it after a restart")(func)
    return click.option("--max-steps", type=click.IntRange(min=1), default=25, show_default=True,
                        help="graph step limit")(func)


def _converse(graph, make_input, question: str | None, thread: str | None, max_steps: int) -> None:
    """Ask once (-q) or loop on stdin; a thread left unfinished is resumed first."""
    from slmflow.graphs.runner import stream_run, thread_config, thread_store_path, unfinished

    config = thread_config(thread, max_steps)
    try:
        if thread:
            _say_thread(graph, config, thread)
        if thread and unfinished(graph, config):
            err_console().print(f"[dim]thread {thread}: resuming the unfinished run[/]")
            _print_reply(stream_run(graph, None, config, err_console()))
        for q in _questions(question):
            _print_reply(stream_run(graph, make_input(q), config, err_console()))
    except sqlite3.DatabaseError as err:  # the store went bad while the run used it
        raise SlmflowError(f"the thread store failed while running thread {thread} ({err})",
                           f"move {thread_store_path()} aside to start fresh threads") from None


def _say_thread(graph, config: dict, thread: str) -> None:
    """Whether ``--thread`` resumes a conversation or starts one, so a lost thread is never silent."""
    from rich.markup import escape

    turns = len(graph.get_state(config).values.get("messages") or [])
    what = f"resuming ({turns} messages)" if turns else "a new thread (nothing saved under this name)"
    err_console().print(f"[dim]thread {escape(thread)}: {what}[/]", highlight=False)


def _print_reply(values: dict) -> None:
    messages = values.get("messages") or []
    if messages:
        content = messages[-1].content if hasattr(messages[-1], "content") else messages[-1]
        click.echo(content if isinstance(content, str) else json.dumps(content))


@run_group.command("assistant")
@click.option("-q", "--question", default=None, help="ask this and exit")
@click.option("--image", "images", multiple=True, type=click.Path(), help="attach an image (repeatable)")
@click.option("--docs", "docs_folder", type=click.Path(), default=None, help="folder for docs questions")
@_thread_options
@_user_errors
def assistant_command(question, images, docs_folder, thread, max_steps) -> None:
    """The router graph: each request goes to the mini, vision, moe or docs node that suits it."""
    from slmflow.graphs.assistant import AssistantGraph
    from slmflow.progress_bars import index_progress_bar

    assistant = AssistantGraph(docs_folder=docs_folder)
    with index_progress_bar(shown=docs_folder is not None) as shown:
        graph = assistant.build(checkpointer=_checkpointer(thread), on_progress=shown)
    _converse(graph, lambda q: {"messages": [("user", q)], "images": list(images)}, question, thread, max_steps)


def _checkpointer(thread: str | None):
    """SQLite for a named thread (it must survive restarts); memory for a one-off run."""
    from langgraph.checkpoint.memory import InMemorySaver
    from slmflow.graphs.runner import sqlite_checkpointer

    return sqlite_checkpointer() if thread else InMemorySaver()


def _user_graph_command(target: str) -> click.Command:
    @click.command(target)
    @click.option("-q", "--question", default=None, help="ask this and exit")
    @_thread_options
    @_user_errors
    def command(question, thread, max_steps) -> None:
        from slmflow.graphs.runner import load_user_graph

        graph = load_user_graph(target)
        if thread or graph.checkpointer is None:  # threads and approvals need a checkpointer
            graph = graph.builder.compile(checkpointer=_checkpointer(thread))
        _converse(graph, lambda q: {"messages": [("user", q)]}, question, thread, max_steps)

    command.__doc__ = f"Run the graph {target}."
    return command


@run_group.command("docs-qa")
@click.argument("folder", type=click.Path())
@click.option("-q", "--question", default=None, help="answer this question and exit")
@click.option("--json", "as_json", is_flag=True, help="print answer, citations and timings as JSON")
@click.option("--model", "model_spec", default=None, help="answering model spec (default: the mini role)")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="chunks retrieved per question")
@click.option("--pick", type=click.Choice(["rule", "model"]), default="rule", show_default=True,
              help="who picks a wh-answer among the evidence's pieces (model: under a quote constraint)")
@_index_options
@_user_errors
def docs_qa_command(folder, question, as_json, model_spec, k, pick, index_dir, index_url, include, no_ocr) -> None:
    """Answer questions about the documents in FOLDER from a quoted sentence of them."""
    from slmflow.agents.docs_qa import DocsQA
    from slmflow.progress_bars import index_progress_bar

    qa = DocsQA(folder, model_spec, index_dir=index_dir, k=k, include=list(include) or None, index_url=index_url,
                pick=pick)
    with index_progress_bar(shown=not as_json) as shown:
        stats = qa.index.update(include=qa.include, ocr=not no_ocr, on_progress=shown)
    if not as_json:
        _print_index_stats(stats)
    if qa.index.count() == 0:
        raise SlmflowError(f"no text could be indexed in {qa.index.folder}",
                           "add .txt .md .html .pdf .docx .csv .json files or images to it")
    def answer(q: str) -> None:
        result = qa.ask(q)
        if as_json:
            click.echo(result.model_dump_json(indent=2))
            return
        click.echo(result.render())
        err_console().print(f"[dim]retrieval {result.retrieval_ms:.0f} ms, answer {result.generation_ms:.0f} ms "
                          f"({result.completion_tokens} tokens)[/]", highlight=False)

    for q in _questions(question, "ask about the documents"):
        answer(q)


def served_name(entry: str) -> tuple[str, str]:
    """``NAME=SPEC`` → (NAME, SPEC); a bare spec is served under its own text."""
    name, eq, spec = entry.partition("=")
    if eq and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", name) and spec:
        return name, spec
    return entry, entry


@main.command("serve")
@click.option("--model", "model_specs", multiple=True,
              help="model to serve: SPEC, named by the spec, or NAME=SPEC (repeatable; default: embedded)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (loopback by default)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="SLMFLOW_SERVE_API_KEY", default=None, show_envvar=True,
              help="require 'Authorization: Bearer KEY' (prefer the variable: a flag shows in ps)")
@click.option("--max-tokens", type=click.IntRange(min=1), default=2048, show_default=True,
              help="most tokens one reply may ask for")
@click.option("--max-request-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
              help="larger bodies get 413")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="waiting requests per model before 429")
@_user_errors
def serve_command(model_specs, host, port, api_key, max_tokens, max_request_bytes, max_queue) -> None:
    """Serve models through the OpenAI chat-completions API (/v1) and Ollama's chat API (/api)."""
    import uvicorn
    from slmflow.runtime.model import load_model
    from slmflow.serve.app import create_app
    from slmflow.serve.state import ServeSettings

    settings = ServeSettings(host=host, port=port, api_key=api_key, max_tokens=max_tokens,
                             max_request_bytes=max_request_bytes, max_queue=max_queue)
    models = {name: load_model(spec) for name, spec in map(served_name, model_specs or ("embedded",))}
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        err_console().print(f"[yellow]warning:[/] serving on {host} without an API key: anyone who can reach "
                          "this port can use the models", highlight=False)
    err_console().print(f"serving {', '.join(models)} at http://{host}:{port} (OpenAI: /v1, Ollama: /api)",
                      highlight=False)
    uvicorn.run(create_app(models, settings), host=host, port=port, log_level="warning")


class _EvalGroup(click.Group):
    """``agents eval SUITE`` for the built-in suites, and ``agents eval FILE`` for a scenario file
    (the same as ``agents eval scenarios FILE``)."""

    def resolve_command(self, ctx, args):
        from pathlib import Path

        if args and args[0] not in self.commands and Path(args[0]).suffix.lower() in SCENARIO_SUFFIXES:
            return "scenarios", self.commands["scenarios"], args
        return super().resolve_command(ctx, args)


SCENARIO_SUFFIXES = (".yaml", ".yml", ".json", ".py")


@main.group("eval", cls=_EvalGroup)
def eval_group() -> None:
    """Run your scenario file (agents eval FILE --target T) or a built-in suite; compare two runs."""


@eval_group.command("scenarios")
@click.argument("file", type=click.Path())
@click.option("--target", required=True,
              help="FILE.py:NAME (a graph or function), assistant[:FOLDER], docs-qa:FOLDER, agent[:FOLDER], "
                   "model[:SPEC]")
@click.option("--model", "model_spec", default=None, help="model spec for the target (default: embedded)")
@click.option("--judge-model", default=None, help="model for Judge checks (default: embedded)")
@click.option("--out", type=click.Path(), default=None, help="output folder (default: evals-out/FILE-STEM)")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="cases run at once")
@click.option("--no-cache", is_flag=True, help="run every case, even those whose output is cached")
@_user_errors
def eval_scenarios(file, target, model_spec, judge_model, out, concurrency, no_cache) -> None:
    """Run a scenario file (YAML, JSON or Python: a pydantic-evals dataset) against a target.
    Exits 1 when a case fails."""
    from pathlib import Path

    from rich.markup import escape
    from slmflow.evals.output_cache import OutputCache
    from slmflow.evals.scenarios import run_scenarios
    from slmflow.evals.targets import resolve_target

    path = Path(file)
    resolved = resolve_target(target, model_spec)  # loads nothing yet: a bad file fails before any model loads
    out_dir = Path(out or f"evals-out/{path.stem}")
    cache = OutputCache(enabled=not no_cache)
    run = run_scenarios(path, resolved, target, out_dir, model=model_spec, judge_model=judge_model,
                        concurrency=concurrency, cache=cache)
    table = _table("case", "result", "failed checks", "s")
    for item in run.items:
        table.add_row(escape(item.id), "pass" if item.passed else "[red]FAIL[/]", escape("; ".join(item.failed_checks)),
                      f"{item.latency_s:.2f}" + (" cached" if item.cached else ""))
    _print_table(table)
    overall = run.intervals["scenario"]["accuracy/all"]
    reused = sum(i.cached for i in run.items)
    click.echo(f"{sum(i.passed for i in run.items)} of {len(run.items)} cases passed "
               f"({overall.text()}); outputs reused from the cache: {reused}, run: {len(run.items) - reused}")
    click.echo(f"wrote {out_dir / 'results.json'} and {out_dir / 'report.html'}")
    if not all(i.passed for i in run.items):
        sys.exit(1)


SUITES = {
    "assistant-tools": "slmflow.evals.assistant_tools:AssistantToolsSuite",
    "bfcl": "slmflow.evals.bfcl:BfclSuite",
    "docs-qa-wikiqa": "slmflow.evals.docs_qa:WikiQASuite",
    "retrieval-scifact": "slmflow.evals.docs_qa:SciFactSuite",
    "routing": "slmflow.evals.routing:RoutingSuite",
}


def _print_run(run) -> None:
    """Each metric per mode as value [95% interval] n, then each baseline's value on the same items."""
    table = _table("metric", *run.summary, *(f"baseline: {b}" for b in run.baselines))
    table.columns[0].no_wrap = True
    for key in sorted({k for row in run.summary.values() for k in row}):
        cells = [run.intervals[m][key].text() if key in run.intervals.get(m, {}) else str(row.get(key, ""))
                 for m, row in run.summary.items()]
        cells += [b[key].text() if key in b else "" for b in run.baselines.values()]
        table.add_row(key, *cells)
    _print_table(table)
    for mode, metrics in run.withheld.items():
        for key, why in metrics.items():
            click.echo(f"withheld {key} for {mode}: {why}")


def _suite_command(name: str, target: str):
    @click.option("--limit", type=click.IntRange(min=1), default=None, help="items per category")
    @click.option("--model", "model_spec", default=None, help="model spec (default: embedded)")
    @click.option("--out", type=click.Path(), default=None, help="output folder (default: evals-out/SUITE)")
    @click.option("--data", type=click.Path(), default=None, help="the suite's data folder (default: shared/data)")
    @click.option("--mode", "modes", multiple=True, help="run only this mode (repeatable; default: all)")
    @click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
                  help="items run at once (a batching model shares its passes among them)")
    @click.option("--split", default=None, help="the data's split, as its file names give it (default: dev)")
    @click.option("--half", type=click.Choice(["all", "fit", "report"]), default=None,
                  help="docs-qa-wikiqa: the half of the questions (fit: constants were fitted on it)")
    @click.option("--seed", type=int, default=None, help="routing: seed of the generated word problems")
    @_user_errors
    def command(limit, model_spec, out, data, modes, concurrency, split, half, seed) -> None:
        import importlib
        import inspect
        from pathlib import Path

        from slmflow.evals.harness import run_suite
        from slmflow.runtime.model import load_model

        module, cls = target.split(":")
        suite_class = getattr(importlib.import_module(module), cls)
        options = {k: v for k, v in {"split": split, "half": half, "seed": seed}.items() if v is not None}
        accepted = inspect.signature(suite_class).parameters
        for option in options:
            if option not in accepted:
                raise SlmflowError(f"suite {name} has no --{option}", f"leave --{option} out for this suite")
        suite = suite_class(data=Path(data) if data else None, **options)
        out_dir = Path(out or f"evals-out/{name}")
        run = run_suite(suite, load_model(model_spec), out_dir, limit=limit, modes=list(modes) or None,
                        concurrency=concurrency)
        _print_run(run)
        click.echo(f"wrote {out_dir / 'results.json'} and {out_dir / 'report.html'} "
                   f"({run.concurrency} item{'s' if run.concurrency > 1 else ''} at once)")

    command.__doc__ = f"Run the {name} suite."
    return eval_group.command(name)(command)


for _name, _target in SUITES.items():
    _suite_command(_name, _target)


@eval_group.command("compare")
@click.argument("a", type=click.Path(exists=True))
@click.argument("b", type=click.Path(exists=True))
@_user_errors
def eval_compare(a: str, b: str) -> None:
    """Compare two results.json files metric by metric (B minus A); a change inside either run's
    95% interval is marked noise."""
    from slmflow.evals.results import compare

    comparison = compare(a, b)
    if comparison.same_data is False:
        err_console().print("[yellow]warning:[/] the two runs saw different data files", highlight=False)
    for key, (va, vb) in comparison.settings_differ.items():
        err_console().print(f"[yellow]note:[/] setting {key}: {va} → {vb}", highlight=False)
    table = _table("mode", "metric", "A", "B", "B - A", "")
    for d in comparison.differences:
        colour = "red" if d.metric.startswith("accuracy") and d.delta < 0 and d.noise is False else ""
        delta = f"[{colour}]{d.delta:+.4f}[/]" if colour else f"{d.delta:+.4f}"
        table.add_row(d.mode, d.metric, f"{d.a:g}", f"{d.b:g}", delta, d.verdict())
    _print_table(table)


if __name__ == "__main__":
    main()
