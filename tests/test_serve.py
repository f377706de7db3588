"""`agents serve`: the embedded model behind the OpenAI and Ollama APIs, used by the official
clients, checked against Ollama's documented wire format, and refusing bad input with the right
status while it keeps serving."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from serving import app_server
from slmflow.serve.app import create_app
from slmflow.serve.state import ServeSettings

OLLAMA_EXAMPLES = Path(__file__).parent / "data" / "ollama_api"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def server(onnx_model):
    settings = ServeSettings(max_tokens=256, max_request_bytes=64 * 1024)
    with app_server(create_app({"embedded": onnx_model}, settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def _ask(client, content: str, **kwargs):
    return client.chat.completions.create(model="embedded", messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=kwargs.pop("max_tokens", 16), **kwargs)


# --- OpenAI API ----------------------------------------------------------------------------------

def test_openai_greedy_reply_is_the_models_own(client, onnx_model):
    reply = _ask(client, "What is the capital of France?")
    local = onnx_model.generate("What is the capital of France?", max_tokens=16).result()
    assert reply.choices[0].message.content == local.text
    assert reply.usage.completion_tokens == local.usage.completion_tokens
    assert reply.choices[0].finish_reason == local.finish_reason


def test_openai_stream_carries_the_same_text_and_usage(client):
    chunks = list(_ask(client, "Name three colours.", stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == _ask(client, "Name three colours.").choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 16


def test_openai_response_format_json_schema_is_enforced(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    reply = _ask(client, "Describe Paris.", max_tokens=60,
                 response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    data = json.loads(reply.choices[0].message.content)
    assert set(data) == {"city", "population"} and isinstance(data["population"], int)


def test_openai_named_tool_choice_returns_a_valid_call(client):
    reply = _ask(client, "What's the weather in Oslo?", max_tokens=60, tools=[WEATHER_TOOL],
                 tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    assert reply.choices[0].finish_reason == "tool_calls"


def test_openai_models_lists_the_served_model_and_its_window(server):
    data = httpx.get(server + "/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["embedded"] and data[0]["context_length"] == 8192


def test_concurrent_requests_get_their_own_greedy_replies(client):
    prompts = ["What is the capital of France?", "Write a short poem about autumn leaves.",
               "List three uses of a paperclip.", "Why is the sky blue?"]
    alone = {p: _ask(client, p).choices[0].message.content for p in prompts}
    together: dict[str, str] = {}

    def ask(p):
        together[p] = _ask(client, p).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_a_client_leaving_mid_stream_frees_the_model_and_leaves_its_cache_sound(server, client, onnx_model):
    prompt = "Tell a very long story."
    expected = onnx_model.generate(prompt, max_tokens=16).text()  # before the server shares the model
    with httpx.stream("POST", server + "/v1/chat/completions", timeout=60, json={
            "model": "embedded", "messages": [{"role": "user", "content": "Tell a very long story."}],
            "stream": True, "max_tokens": 250, "temperature": 0}) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")  # then hang up after the first event
    assert _ask(client, prompt).choices[0].message.content == expected


@pytest.mark.slow  # runs the CLI in a subprocess
def test_agents_serve_command_serves_models_under_given_names(tmp_path):
    import sys

    from serving import command_server

    args = [sys.executable, "-m", "slmflow.cli", "serve", "--model", "small=embedded", "--port", "{port}"]
    with command_server(args, "/", tmp_path / "serve.log") as url:
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["small"]
        reply = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="small", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0)
        assert reply.choices[0].message.content


# --- bad input -----------------------------------------------------------------------------------

def _post(server, path, body: bytes | dict, **headers):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server + path, content=content, headers={"content-type": "application/json", **headers},
                      timeout=60)


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b'{"model": "embedded", "messages": [', 400, "not valid JSON"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model 'gpt-9' is not served"),
    ({"model": "embedded", "messages": [{"role": "user", "content": "x" * 70_000}]}, 413, "larger than 65536"),
    ({"model": "embedded", "messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     400, "Invalid type: nonsense"),
    ({"model": "embedded", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}, 400,
     "above this server's limit of 256"),
    ({"model": "embedded", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role 'wizard'"),
    ({"model": "embedded", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n: Input should be"),
])
def test_bad_openai_requests_get_the_matching_status_and_the_server_keeps_serving(server, client, body, status,
                                                                                  needle):
    reply = _post(server, "/v1/chat/completions", body)
    assert reply.status_code == status
    assert needle in reply.json()["error"]["message"]
    assert _ask(client, "Say hi.", max_tokens=2).choices[0].message.content


def test_bad_ollama_request_gets_ollamas_error_shape(server):
    reply = _post(server, "/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 404 and "model 'nope' is not served" in reply.json()["error"]


def test_api_key_is_required_when_set(onnx_model):
    app = create_app({"embedded": onnx_model}, ServeSettings(api_key="s3cret", tool_selector=False))
    with app_server(app) as url:
        refused = _post(url, "/v1/chat/completions", {"model": "embedded", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert _ask(keyed, "Say hi.", max_tokens=2).choices[0].message.content


# --- Ollama API ----------------------------------------------------------------------------------

def _same_shape(documented, ours, where="") -> None:
    """Every documented field is present with the documented JSON type (a documented null is optional)."""
    if documented is None:
        return
    if isinstance(documented, dict):
        assert isinstance(ours, dict), where
        for key, value in documented.items():
            assert key in ours or value is None, f"{where}.{key} missing"
            _same_shape(value, ours.get(key), f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(ours, list) and ours, where
        _same_shape(documented[0], ours[0], where + "[0]")
    else:
        assert type(ours) is type(documented) or {type(ours), type(documented)} <= {int, float}, where


@pytest.mark.parametrize("example", ["chat_no_streaming", "chat_structured_outputs", "chat_with_tools", "chat_load"])
def test_ollama_replies_match_the_documented_examples(server, example):
    doc = json.loads((OLLAMA_EXAMPLES / f"{example}.json").read_text())
    reply = _post(server, "/api/chat", {**doc["request"], "model": "embedded"})
    assert reply.status_code == 200, reply.text
    _same_shape({**doc["response"], "model": "embedded"}, reply.json())
    if example == "chat_structured_outputs":
        data = json.loads(reply.json()["message"]["content"])
        assert isinstance(data["age"], int) and isinstance(data["available"], bool)


def test_ollama_stream_is_ndjson_in_the_documented_shape(server, onnx_model):
    doc = json.loads((OLLAMA_EXAMPLES / "chat_streaming.json").read_text())
    # Greedy, so the stream can be compared with the model's own reply (Ollama's default samples).
    expected = onnx_model.generate(doc["request"]["messages"][0]["content"], max_tokens=8).result()
    body = {**doc["request"], "model": "embedded", "options": {"num_predict": 8, "temperature": 0}}
    with httpx.stream("POST", server + "/api/chat", json=body, timeout=60) as reply:
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    for chunk in lines[:-1]:
        _same_shape({**doc["response_chunk"], "model": "embedded"}, chunk)
    _same_shape({**doc["response_final"], "model": "embedded"}, lines[-1])
    assert "".join(line["message"]["content"] for line in lines) == expected.text
    assert lines[-1]["eval_count"] == expected.usage.completion_tokens


def test_official_ollama_client_streams_and_honours_format(server):
    client = ollama.Client(host=server)
    parts = list(client.chat(model="embedded", messages=[{"role": "user", "content": "Name a fruit."}],
                             stream=True, options={"temperature": 0, "num_predict": 8}))
    assert parts[-1].done and "".join(p.message.content for p in parts)
    reply = client.chat(model="embedded", messages=[{"role": "user", "content": "Give a fruit as JSON."}],
                        format={"type": "object", "properties": {"fruit": {"type": "string"}}, "required": ["fruit"]},
                        options={"temperature": 0, "num_predict": 40})
    assert "fruit" in json.loads(reply.message.content)
    assert "embedded" in [m.model for m in client.list().models]


def test_ollama_chat_without_num_predict_ends_a_repeated_sentence_within_200_tokens(server, onnx_model):
    story = [{"role": "user", "content": "Write a long story about a cat."}]
    # Unstopped, the model says "She was a wanderer in a world where ..." over and over to any cap.
    assert len(onnx_model.generate(story, max_tokens=300, stop_on_loops=False).result().token_ids) == 300
    reply = _post(server, "/api/chat", {"model": "embedded", "messages": story, "stream": False,
                                        "options": {"temperature": 0}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["eval_count"] < 200 and body["done_reason"] == "stop", body["eval_count"]
