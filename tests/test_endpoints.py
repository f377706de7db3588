"""The OpenAI-compatible and Ollama backends against real servers: llama-cpp-python's OpenAI server
running the embedded GGUF (third-party), and `agents serve` (whose greedy replies must equal the
local model's). The last test runs `agents run docs-qa` end to end with the model behind
llama-cpp-python's server and the index in a Chroma server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from serving import app_server, command_server, free_port
from slmflow.runtime import load_model
from slmflow.runtime.constraints import Choice, JsonSchema, Regex
from slmflow.runtime.embedded import find_gguf
from slmflow.runtime.endpoints.ollama_endpoint import OllamaModel
from slmflow.runtime.errors import EndpointError, PromptError
from slmflow.runtime.specs import parse_spec
from slmflow.tools.rag.loaders import load_document
from slmflow.runtime.tool_calling import ToolSpec, generate_with_tools
from slmflow.serve.app import create_app
from slmflow.serve.state import ServeSettings

EXAMPLES = Path(__file__).parent.parent / "examples" / "docs"
WEATHER = ToolSpec(name="get_weather", description="Get the current weather for a city",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on the embedded GGUF, model alias "smollm2".
    ``--n_batch 1``: llama-cpp-python 0.3.36 (llama.cpp with AMX repacking of q4_1 weights)
    segfaults in ``decode`` on any batch of more than one token on CPUs with AMX (seen on this
    project's CI machines, Dec 2026); one token a step is slower to prefill and works."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(find_gguf()), "--host", "127.0.0.1",
            "--port", "{port}", "--n_ctx", "4096", "--n_batch", "1", "--chat_format", "chatml-function-calling",
            "--model_alias", "smollm2"]
    with command_server(args, "/v1/models", log) as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def serve_url(onnx_model):
    with app_server(create_app({"embedded": onnx_model}, ServeSettings(tool_selector=False, max_queue=1))) as url:
        yield url


# --- OpenAI-compatible backend, third-party server -----------------------------------------------

@pytest.fixture(scope="module")
def llama_model(llama_server):
    return load_model(f"openai:smollm2@{llama_server}")


def test_openai_backend_streams_text_and_usage_from_llama_cpp(llama_model):
    response = llama_model.generate("Name three colours.", max_tokens=12)
    deltas = list(response)
    result = response.result()
    assert len(deltas) > 1 and "".join(deltas) == result.text
    assert 0 < result.usage.completion_tokens <= 12  # counted from chunks: llama-cpp streams no usage


def test_openai_backend_holds_llama_cpp_to_a_schema(llama_model):
    data = json.loads(llama_model.generate("Describe a person.", constraint=JsonSchema(PERSON), max_tokens=60).text())
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)
    assert llama_model._schema_form == "json_object"  # the older form, after the server refused json_schema


def test_openai_backend_choice_and_regex_on_llama_cpp(llama_model):
    assert llama_model.generate("Is the sky blue?", constraint=Choice(["yes", "no"])).text() in ("yes", "no")
    assert Regex(r"[0-9]{3}-[0-9]{4}").validate_text(
        llama_model.generate("Invent a phone number.", constraint=Regex(r"[0-9]{3}-[0-9]{4}")).text())


def test_openai_backend_named_tool_choice_on_llama_cpp(llama_model):
    turn = generate_with_tools(llama_model, [{"role": "user", "content": "Weather in Oslo?"}], [WEATHER],
                               tool_choice="get_weather")
    assert [c.name for c in turn.tool_calls] == ["get_weather"] and set(turn.tool_calls[0].arguments) == {"city"}


# --- both backends against agents serve ----------------------------------------------------------

@pytest.fixture(scope="module")
def ollama_model(serve_url):
    import os

    previous = os.environ.get("OLLAMA_HOST")
    os.environ["OLLAMA_HOST"] = serve_url
    try:
        yield OllamaModel(parse_spec("ollama:embedded"))
    finally:
        os.environ.pop("OLLAMA_HOST") if previous is None else os.environ.update(OLLAMA_HOST=previous)


@pytest.fixture(scope="module")
def served_openai(serve_url):
    return load_model(f"openai:embedded@{serve_url}/v1")


@pytest.mark.parametrize("backend", ["served_openai", "ollama_model"])
def test_backend_greedy_reply_equals_the_local_model(request, backend, onnx_model):
    remote = request.getfixturevalue(backend)
    for prompt in ("What is the capital of France?", "List three uses of a paperclip."):
        assert remote.generate(prompt, max_tokens=20).text() == onnx_model.generate(prompt, max_tokens=20).text()


@pytest.mark.parametrize("backend", ["served_openai", "ollama_model"])
def test_backend_required_tool_choice_gives_a_valid_call(request, backend):
    remote = request.getfixturevalue(backend)
    turn = generate_with_tools(remote, [{"role": "user", "content": "Weather in Paris?"}], [WEATHER],
                               tool_choice="required")
    assert [c.name for c in turn.tool_calls] == ["get_weather"] and set(turn.tool_calls[0].arguments) == {"city"}


def test_langchain_chat_model_runs_on_a_served_model(served_openai, onnx_model):
    from slmflow.agents.chat_model import SlmflowChatModel

    expected = onnx_model.generate("What is the capital of France?", max_tokens=16).text()
    chat = SlmflowChatModel(model=str(served_openai.spec), max_tokens=16)
    assert chat.invoke("What is the capital of France?").content == expected
    tools = SlmflowChatModel(model=str(served_openai.spec), max_tokens=64).bind_tools(
        [WEATHER.openai_format()], tool_choice="get_weather")
    message = tools.invoke("Weather in Rome?")
    assert message.tool_calls[0]["name"] == "get_weather" and set(message.tool_calls[0]["args"]) == {"city"}


def test_ollama_backend_reads_the_window_and_sizes_num_ctx(ollama_model):
    assert ollama_model.context_length == 8192  # from /api/show, as Ollama reports it
    assert ollama_model.num_ctx(100, 256) == 4096 and ollama_model.num_ctx(3000, 2000) == 8192
    with pytest.raises(PromptError, match="context window of 8192"):
        ollama_model.generate("word " * 30_000)


def test_openai_backend_retries_a_full_queue_with_backoff(serve_url, served_openai, caplog):
    """The server queues one request per model (max_queue=1 here), answers 429 beyond that, and the
    backend's client retries until the model is free."""
    busy = threading.Thread(target=lambda: served_openai.generate("Tell a long story.", max_tokens=120).text())
    busy.start()
    import time

    time.sleep(0.5)
    with caplog.at_level(logging.INFO, logger="openai"):
        assert served_openai.generate("Say hi.", max_tokens=4).text()
    busy.join()
    assert "Retrying request" in caplog.text


@pytest.mark.slow  # waits out connection attempts
def test_unreachable_endpoints_say_what_to_do():
    with pytest.raises(EndpointError, match=r"cannot reach http://127.0.0.1:\d+/v1.*start the server"):
        load_model(f"openai:x@http://127.0.0.1:{free_port()}/v1")
    import os

    os.environ["OLLAMA_HOST"], previous = f"127.0.0.1:{free_port()}", os.environ.get("OLLAMA_HOST")
    try:
        with pytest.raises(EndpointError, match="cannot reach Ollama.*ollama serve"):
            OllamaModel(parse_spec("ollama:phi3.5"))
    finally:
        os.environ.pop("OLLAMA_HOST") if previous is None else os.environ.update(OLLAMA_HOST=previous)


def test_grammar_constraints_are_refused_for_endpoints(served_openai):
    from slmflow.runtime.constraints import ConstraintError, Grammar

    with pytest.raises(ConstraintError, match="cannot be held to a Lark/GBNF grammar"):
        served_openai.generate("hi", constraint=Grammar('start: "a"'))


# --- wire formats and presets (no server) -------------------------------------------------------

def test_a_conversation_with_tool_calls_round_trips_through_the_wire_format():
    from slmflow.runtime.endpoints.base import to_wire_messages
    from slmflow.runtime.messages import Message
    from slmflow.serve.chat import wire_to_messages
    from slmflow.serve.wire import WireMessage

    ours = [Message(role="user", content="Weather in Oslo and Rome?"),
            Message(role="assistant", content='<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                              '</tool_call>\n<tool_call>{"name": "get_weather", "arguments": '
                                              '{"city": "Rome"}}</tool_call>'),
            Message(role="tool", content="Sunny"), Message(role="tool", content="Rain")]
    wire = to_wire_messages(ours)
    ids = [c["id"] for c in wire[1]["tool_calls"]]
    assert len(set(ids)) == 2 and [m["tool_call_id"] for m in wire[2:]] == ids
    assert json.loads(wire[1]["tool_calls"][1]["function"]["arguments"]) == {"city": "Rome"}
    assert wire_to_messages([WireMessage.model_validate(m) for m in wire]) == ours


def test_presets_name_their_url_and_key_variable(monkeypatch):
    from slmflow.runtime.endpoints.openai_endpoint import resolve_base_url

    assert resolve_base_url("github") == ("https://models.github.ai/inference", "GITHUB_TOKEN")
    assert resolve_base_url("nim") == ("https://integrate.api.nvidia.com/v1", "NVIDIA_API_KEY")
    assert resolve_base_url("http://127.0.0.1:8000/v1") == ("http://127.0.0.1:8000/v1", "OPENAI_API_KEY")
    monkeypatch.delenv("AZURE_AI_ENDPOINT", raising=False)
    with pytest.raises(EndpointError, match=r"AZURE_AI_ENDPOINT, which is not set"):
        resolve_base_url("azure")
    monkeypatch.setenv("AZURE_AI_ENDPOINT", "https://r.openai.azure.com/openai/v1/")
    assert resolve_base_url("azure") == ("https://r.openai.azure.com/openai/v1/", "AZURE_AI_API_KEY")
    with pytest.raises(EndpointError, match="neither an http"):
        resolve_base_url("ftp://x")


# --- end to end ----------------------------------------------------------------------------------

def test_docs_qa_with_a_served_model_and_a_chroma_server(llama_server, chroma_url, tmp_path):
    run = [sys.executable, "-m", "slmflow.cli", "run", "docs-qa", str(EXAMPLES), "--model",
           f"openai:smollm2@{llama_server}", "--pick", "model", "--index-url", chroma_url]
    done = subprocess.run([*run, "--json", "-q", "How tall is the Eiffel Tower?"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["sources"] and all(s["path"] in {"eiffel-tower.md", "honeybees.html", "coffee.txt"}
                                     for s in answer["sources"])
    # The served model takes no masks: its reply was checked on arrival. Shown as verified only
    # when it is the document's text at the offsets given; the evidence always is.
    assert answer["found"], answer
    document = load_document(EXAMPLES / answer["evidence"]["path"]).text
    assert document[answer["evidence"]["start"]:answer["evidence"]["end"]] == answer["evidence"]["text"]
    if answer["verified"]:
        assert document[answer["answer_start"]:answer["answer_end"]] == answer["answer"]
    else:
        assert answer["answer_start"] is None
    again = subprocess.run([*run, "-q", "What do honeybees eat?"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "indexed 0 files" in again.stderr and "3 unchanged" in again.stderr
