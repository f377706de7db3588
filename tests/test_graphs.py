"""The LangChain chat model, the role paths (mini, vision, moe), the router graph, threads that
survive a killed process, approvals, and the errors a user can cause.

Models are real: the embedded SmolLM2 for chat, routing and tools; a tiny random-weight PhiMoE
(transformers, and exported to an onnxruntime-genai folder), a tiny random-weight LLaVA and a tiny
random-weight model in Phi-3.5-vision's onnxruntime-genai layout (built in conftest) for the moe
and vision code paths.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import (
    build_tiny_llava,
    build_tiny_phi3v_onnx,
    build_tiny_phimoe,
    render_text,
)
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from PIL import Image
from pydantic import BaseModel
from slmflow.agents.chat_model import SlmflowChatModel, langchain_tool
from slmflow.graphs.assistant import AssistantGraph, GraphLimits
from slmflow.runtime import load_model
from slmflow.runtime.errors import ModelLoadError, PromptError, SlmflowError
from slmflow.tools import calculator, tool


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmflow.cli", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


# --- LangChain / LangGraph fit -------------------------------------------------------------------

def test_langgraph_prebuilt_react_agent_calls_a_builtin_tool(onnx_model):
    from langgraph.prebuilt import create_react_agent

    agent = create_react_agent(SlmflowChatModel(model="embedded", max_tokens=96), [langchain_tool(calculator)])
    out = agent.invoke({"messages": [("user", "Use the calculator to compute 1234 * 5678.")]})
    results = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert results and results[0].name == "calculator" and results[0].content == "7006652"
    assert out["messages"][-1].type == "ai" and not out["messages"][-1].tool_calls


def test_chat_model_streams_and_batches_like_invoke(onnx_model):
    llm = SlmflowChatModel(model="embedded", max_tokens=16)
    whole = llm.invoke("Name a colour.").content
    assert "".join(chunk.content for chunk in llm.stream("Name a colour.")) == whole
    assert [m.content for m in llm.batch(["Name a colour.", "Name a colour."])] == [whole, whole]


def test_structured_output_always_parses(onnx_model):
    class City(BaseModel):
        name: str
        country: str

    city = SlmflowChatModel(model="embedded", max_tokens=64).with_structured_output(City).invoke(
        "Paris is a city in which country?")
    assert isinstance(city, City)


def test_bind_tools_honours_a_named_tool_choice(onnx_model):
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = SlmflowChatModel(model="embedded", max_tokens=64).bind_tools([get_weather.fn], tool_choice="get_weather")
    message = llm.invoke("Tell me a joke.")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]


# --- roles ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_phimoe(tmp_path_factory):
    return build_tiny_phimoe(tmp_path_factory.mktemp("tiny-phimoe") / "hf")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava") / "hf")


@pytest.fixture(scope="module")
def tiny_phimoe_onnx(tiny_phimoe, tmp_path_factory):
    from phimoe_onnx import export_onnx_folder

    return export_onnx_folder(tiny_phimoe, tmp_path_factory.mktemp("tiny-phimoe-onnx") / "onnx")


@pytest.fixture(params=["hf", "onnx"])  # transformers, and the onnxruntime-genai export
def phimoe_spec(request, tiny_phimoe):
    folder = tiny_phimoe if request.param == "hf" else request.getfixturevalue("tiny_phimoe_onnx")
    return f"{request.param}:{folder}"


@pytest.fixture(scope="module")
def tiny_phi3v_onnx(tmp_path_factory):
    return build_tiny_phi3v_onnx(tmp_path_factory.mktemp("tiny-phi3v"))


def test_phimoe_through_our_loop_matches_transformers_generate(phimoe_spec, tiny_phimoe):
    from transformers import AutoModelForCausalLM

    model = load_model(phimoe_spec)
    if phimoe_spec.startswith("onnx:"):  # onnxruntime-genai reads the export as a PhiMoE model
        assert model.backend.config["model"]["type"] == "phimoe"
    ids = model.prompt_ids("Hello there")
    ours = model.generate(ids, max_tokens=12).result().token_ids
    reference = AutoModelForCausalLM.from_pretrained(tiny_phimoe).eval()
    theirs = reference.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    assert ours == theirs
    follow_up = ids + ours + model.prompt_ids("And then?")
    assert model.generate(follow_up, max_tokens=4).result().usage.cached_tokens >= len(ids)  # prefix reuse


def test_vision_model_through_our_loop_matches_transformers_generate(tiny_llava, tmp_path):
    from slmflow.runtime.vision import VisionModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    images = [render_text(tmp_path / "a.png", ["Total 42"]), render_text(tmp_path / "b.png", ["Paid"])]
    ours = VisionModel(tiny_llava).generate("What do these show?", images=images, max_tokens=10,
                                                       stop_on_loops=False).result().token_ids
    processor = AutoProcessor.from_pretrained(tiny_llava)
    reference = AutoModelForImageTextToText.from_pretrained(tiny_llava).eval()
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What do these show?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=text, images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    theirs = reference.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert ours == theirs.tolist()


def test_onnx_vision_model_through_our_loop_matches_onnxruntime_genai(tiny_phi3v_onnx, tmp_path):
    import onnxruntime_genai as og
    from slmflow.runtime.vision import OnnxVisionModel

    images = [render_text(tmp_path / "a.png", ["Total 42"]), render_text(tmp_path / "b.png", ["Paid"])]
    model = OnnxVisionModel(tiny_phi3v_onnx)
    ours = model.generate("What do these show?", images=images, max_tokens=10, stop_on_loops=False).result()
    # onnxruntime-genai's own greedy loop over the same processor output
    prompt = model.tokenizer.hf.apply_chat_template(
        [{"role": "user", "content": "<|image_1|>\n<|image_2|>\nWhat do these show?"}],
        add_generation_prompt=True, tokenize=False)
    engine = og.Model(str(tiny_phi3v_onnx))
    processed = engine.create_multimodal_processor()(prompt, images=og.Images.open(*map(str, images)))
    ids = processed["input_ids"].as_numpy()[0]
    params = og.GeneratorParams(engine)
    params.set_search_options(max_length=len(ids) + 10, do_sample=False, top_k=1)
    generator = og.Generator(engine, params)
    generator.set_inputs(processed)
    theirs = []
    while not generator.is_done():
        generator.generate_next_token()
        theirs.append(int(generator.get_next_tokens()[0]))
    assert (ids == -1).sum() > 1000 and (ids == -2).sum() > 1000  # both images were expanded
    assert ours.usage.prompt_tokens == len(ids)
    assert ours.token_ids == theirs


def test_onnx_vision_model_reads_the_pixels(tiny_phi3v_onnx, tmp_path):
    from slmflow.runtime.vision import OnnxVisionModel

    model = OnnxVisionModel(tiny_phi3v_onnx)
    light, dark = tmp_path / "light.png", tmp_path / "dark.webp"  # WebP: not a format onnxruntime-genai decodes
    Image.new("RGB", (400, 300), "white").save(light)
    Image.new("RGB", (400, 300), (20, 40, 160)).save(dark)
    replies = [model.generate("Describe it.", images=[image], max_tokens=6).result().token_ids
               for image in (light, dark)]
    assert replies[0] != replies[1]


def test_onnx_vision_model_errors_name_the_problem(tiny_phi3v_onnx, tmp_path):
    from slmflow.runtime import embedded
    from slmflow.runtime.vision import OnnxVisionModel

    with pytest.raises(ModelLoadError, match="without Phi-3.5-vision's vision session"):
        OnnxVisionModel(embedded.ensure_onnx())
    broken = Path(shutil.copytree(tiny_phi3v_onnx, tmp_path / "broken"))
    (broken / "processor_config.json").write_text("{", encoding="utf-8")
    page = render_text(tmp_path / "page.png", ["Total 42"])
    with pytest.raises(ModelLoadError, match="image processor for .*broken failed"):
        OnnxVisionModel(broken).generate("Read it.", images=[page], max_tokens=4)  # made or first used
    with pytest.raises(PromptError, match="does not fit the model's context of 8192"):
        OnnxVisionModel(tiny_phi3v_onnx).generate("Read it.", images=[page, page], max_tokens=4000)


def test_undecodable_image_is_named(tmp_path):
    from slmflow.runtime.vision import load_images

    bad = tmp_path / "scan.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(PromptError, match="scan.png cannot be decoded"):
        load_images([bad])


def test_vision_role_reads_the_image_when_configured(tiny_llava, tmp_path, monkeypatch):
    from slmflow.graphs.vision import read_image

    (tmp_path / "slmflow.toml").write_text(f'[roles]\nvision = "hf:{tiny_llava}"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    _, model, usage, note = read_image(render_text(tmp_path / "page.png", ["Total 42"]))
    assert note == "vision model" and usage.completion_tokens > 0 and str(tiny_llava) in model.spec


def test_vision_role_runs_a_phi3v_onnx_folder(tiny_phi3v_onnx, tmp_path, monkeypatch):
    from slmflow.graphs.vision import read_image

    (tmp_path / "slmflow.toml").write_text(f'[roles]\nvision = "onnx:{tiny_phi3v_onnx}"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    _, model, usage, note = read_image(render_text(tmp_path / "page.png", ["Total 42"]))
    assert note == "vision model" and model.spec == f"onnx:{tiny_phi3v_onnx}"
    assert usage.prompt_tokens > 1000 and usage.completion_tokens > 0


# --- the router graph -------------------------------------------------------------------------

def test_document_image_with_arithmetic_goes_through_vision_fallback_and_moe(onnx_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no slmflow.toml: no vision model, so OCR reads the image
    invoice = render_text(tmp_path / "invoice.png", ["Invoice 1017", "Paper: 12 EUR", "Ink: 30 EUR"])
    graph = AssistantGraph().build()
    out = graph.invoke({"messages": [("user", "What is the total of the two amounts on this invoice? "
                                               "Add them step by step.")], "images": [str(invoice)]})
    nodes = [event["node"] for event in out["trace"]]
    assert nodes == ["plan", "vision", "route", "moe"]
    vision = out["trace"][1]
    assert vision["note"].startswith("fallback: ocr")
    read = out["image_texts"][0].replace(" ", "")  # OCR's spacing around ':' varies
    assert "Paper:12EUR" in read and "Ink:30EUR" in read
    route = out["trace"][2]
    assert route["tokens"] <= 2  # one short constrained decision, not a planning essay
    assert out["messages"][-1].type == "ai"


def test_question_about_the_documents_is_routed_by_their_similarity_without_a_model_call(onnx_model, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    docs = Path(shutil.copytree(Path(__file__).parent.parent / "examples" / "docs", tmp_path / "docs"))
    out = AssistantGraph(docs_folder=docs).build().invoke({"messages": [("user", "How tall is the Eiffel Tower?")]})
    route = out["trace"][1]
    assert [e["node"] for e in out["trace"]] == ["plan", "route", "docs"]
    assert route["tokens"] == 0 and route["note"].startswith("docs (documents match")
    assert "eiffel-tower.md" in out["messages"][-1].content


def test_a_thread_answers_a_follow_up_from_its_earlier_turn(onnx_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    graph = AssistantGraph().build(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "follow-up"}}
    first = graph.invoke({"messages": [("user", "What is 6 * 7?")]}, config)
    assert "42" in first["messages"][-1].content
    second = graph.invoke({"messages": [("user", "And double it?")]}, config)
    assert second["trace"][-1]["note"] == "status done, tools: calculator"
    assert "84" in second["messages"][-1].content and len(second["messages"]) == 4


def test_a_docs_follow_up_is_searched_with_the_question_it_follows(onnx_model, tmp_path, monkeypatch):
    from slmflow.agents.follow_ups import with_antecedent

    history = [{"role": "user", "content": "How tall is the Eiffel Tower?"}, {"role": "assistant", "content": "330 m"}]
    assert with_antecedent("When was it built?", history) == "When was the Eiffel Tower built?"
    assert with_antecedent("What is its height?", history) == "What is the Eiffel Tower's height?"
    assert with_antecedent("What do honeybees eat?", history) == "What do honeybees eat?"
    assert with_antecedent("Where do they live?", [{"role": "user", "content": "How many bees live in a hive?"}]) \
        == "How many bees live in a hive? Where do they live?"  # no name to carry: the whole question
    monkeypatch.chdir(tmp_path)
    docs = Path(shutil.copytree(Path(__file__).parent.parent / "examples" / "docs", tmp_path / "docs"))
    graph = AssistantGraph(docs_folder=docs).build(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "docs"}}
    graph.invoke({"messages": [("user", "How tall is the Eiffel Tower?")]}, config)
    second = graph.invoke({"messages": [("user", "Who is it named after?")]}, config)
    assert [e["node"] for e in second["trace"]][-1] == "docs"
    # Asked alone, "Who is it named after?" is answered from coffee.txt ("According"); with the
    # tower carried over, from the tower's own sentence.
    assert second["messages"][-1].content.startswith("Gustave Eiffel"), second["messages"][-1].content
    assert "eiffel-tower.md" in second["messages"][-1].content


def test_moe_calls_a_read_only_tool_that_fits_its_question(onnx_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assistant = AssistantGraph()
    state = {"messages": [HumanMessage("Pens cost 3 EUR each. What do 14 pens cost? Work out 14 * 3.")],
             "route": "reasoning"}
    assert assistant.pick(state) == "mini"  # the tools agent, on the moe role's model
    out = assistant.build_agent().invoke(state)
    assert [e["node"] for e in out["trace"]] == ["moe", "tools", "moe"]
    assert out["trace"][-1]["note"] == "status done, tools: calculator"
    assert "42" in out["messages"][-1].content


def test_moe_drops_the_oldest_turns_of_a_long_thread_to_fit(tiny_phi3_dirs, tmp_path, monkeypatch):
    (tmp_path / "slmflow.toml").write_text(f'[roles]\nmoe = "hf:{tiny_phi3_dirs[0]}"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    turns = [HumanMessage("Tell me a long story about apples, please. " * 4), AIMessage("Once upon a time. " * 8)] * 4
    update = AssistantGraph(limits=GraphLimits(max_tokens=64)).moe({"messages": [*turns, HumanMessage("How many apples?")]})
    assert "oldest messages to fit" in update["trace"][0]["note"]


def test_route_signals_decide_before_the_model_and_narrow_its_choice(onnx_model):
    from slmflow.graphs.assistant import RouteSignals, decide_route
    from slmflow.runtime.tool_selection import ToolSelector

    @tool
    def convert_currency(amount: float, source: str, target: str) -> float:
        """Convert an amount of money from one currency to another at today's exchange rate."""
        return amount

    signals = RouteSignals.measure("Convert 250 euros to US dollars.", ToolSelector(), [calculator, convert_currency])
    assert signals.best_tool == "convert_currency" and signals.docs_similarity is None
    assert decide_route(onnx_model, "Convert 250 euros to US dollars.", signals)[:2] == ("tools", None)
    route, usage, why = decide_route(onnx_model, "Tell me a joke.", RouteSignals(tool_score=0.1))
    assert route in ("chat", "tools", "reasoning") and usage.completion_tokens >= 1 and why == "chosen by the model"


def test_moe_role_runs_the_configured_phimoe(phimoe_spec, onnx_model, tmp_path, monkeypatch):
    (tmp_path / "slmflow.toml").write_text(f'[roles]\nmoe = "{phimoe_spec}"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    update = AssistantGraph().moe({"messages": [HumanMessage("If Ann has 3 apples and eats 1, how many are left?")]})
    assert update["trace"][0]["model"] == phimoe_spec
    assert update["trace"][0]["tokens"] > 0


def test_role_mapped_to_a_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "slmflow.toml").write_text('[roles]\nmini = "hf:/nowhere/phi-3.5-mini"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SlmflowError, match=r"slmflow.toml: roles.mini: .*nowhere"):  # at start, not mid-run
        AssistantGraph()


def test_tool_needing_approval_waits_for_the_user(onnx_model, tmp_path):
    written = []

    @tool(mutates=True, needs_approval=True)
    def write_note(text: str) -> str:
        """Write a note with the given text to the notes file."""
        written.append(text)
        return "saved"

    graph = AssistantGraph(tools=[write_note], allow_mutating_tools=True).build_agent(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "approval"}}
    graph.invoke({"messages": [("user", "Write a note with the text: buy milk")]}, config)
    pending = graph.get_state(config)
    assert pending.next == ("approve",) and pending.tasks[0].interrupts[0].value["tool"] == "write_note"
    assert written == []
    graph.invoke(Command(resume="no"), config)
    assert written == [] and not graph.get_state(config).next
    first, tools, last = graph.get_state(config).values["trace"]
    assert first["node"] == "mini" and first["tokens"] > 0 and first["tokens_per_s"] > 0
    assert tools["node"] == "tools" and tools["note"] == "write_note: error"  # declined: not run
    assert last["node"] == "mini" and last["note"] == "status done, tools: write_note"


# --- threads and user graphs from the CLI ---------------------------------------------------

SLOW_GRAPH = textwrap.dedent('''
    import os, sys, time
    from langgraph.graph import END, START, MessagesState, StateGraph

    def first(state):
        return {"messages": [("assistant", "first saw: " + state["messages"][-1].content)]}

    def second(state):
        if os.environ.get("HANG_IN_SECOND"):
            print("second started", file=sys.stderr, flush=True)
            time.sleep(600)
        return {"messages": [("assistant", "second done")]}

    builder = StateGraph(MessagesState)
    builder.add_node("first", first)
    builder.add_node("second", second)
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", END)
    graph = builder.compile()
''')


@pytest.mark.slow  # runs the CLI in a subprocess
def test_killed_conversation_continues_from_its_checkpoint(tmp_path):
    import os

    graph_file = tmp_path / "my_graph.py"
    graph_file.write_text(SLOW_GRAPH, encoding="utf-8")
    env = {**os.environ, "SLMFLOW_CACHE_DIR": str(tmp_path / "cache"), "HANG_IN_SECOND": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slmflow.cli", "run", f"{graph_file}:graph", "--thread", "t1",
                             "-q", "hello"], stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if "second started" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    del env["HANG_IN_SECOND"]
    done = _cli("run", f"{graph_file}:graph", "--thread", "t1", "-q", "again", env=env)
    assert done.returncode == 0, done.stderr
    assert "resuming the unfinished run" in done.stderr
    assert done.stdout.splitlines() == ["second done", "second done"]  # the resumed run, then the new one


@pytest.mark.slow  # runs the CLI in a subprocess
def test_malformed_graph_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("graph = (\n", encoding="utf-8")
    done = _cli("run", f"{bad}:graph", "-q", "hi")
    assert done.returncode == 2 and "broken.py:1: syntax error" in done.stderr and "Traceback" not in done.stderr


def test_example_custom_graph_runs_from_the_cli(onnx_model):
    done = _cli("run", str(Path(__file__).resolve().parents[1] / "examples" / "custom_graph.py") + ":graph",
                "-q", "I won the race today!")
    assert done.returncode == 0, done.stderr
    assert "classify done" in done.stderr and "reply done" in done.stderr and done.stdout.strip()


def test_example_map_documents_reads_every_document_at_once_and_quotes_the_answer(onnx_model):
    done = _cli("run", str(Path(__file__).resolve().parents[1] / "examples" / "map_documents.py") + ":graph",
                "-q", "How tall is the Eiffel Tower?")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("read done") == 3 and "reduce done" in done.stderr
    answer = done.stdout.strip().splitlines()
    assert answer[0] == "The tower is 330 metres tall"
    assert "eiffel-tower.md" in answer[1]
