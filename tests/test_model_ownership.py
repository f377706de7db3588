"""One owner per loaded model: the registry loads a spec once however many threads ask, and a
server that gives one model two names still drives it from one thread (issue #25)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from slmflow.runtime.loop import GenerationResult, Response, Usage
from slmflow.runtime.queued import QueuedModel
from slmflow.runtime.registry import Registry, worker_for
from slmflow.serve.app import create_app
from slmflow.serve.state import ServeSettings


class OverlapCountingModel:
    """Stands in for a loaded model and records how many generations run on it at once: the
    state a real model keeps between tokens (its KV cache, its prefix cache) allows one."""

    spec = "counting"
    context_length = 2048

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.calls = 0

    def generate(self, messages, **_):
        def stream():
            with self._lock:
                self.running += 1
                self.calls += 1
                self.most_at_once = max(self.most_at_once, self.running)
            try:
                time.sleep(0.2)  # long enough for a second request to arrive meanwhile
                yield "ok"
            finally:
                with self._lock:
                    self.running -= 1
            return GenerationResult(text="ok", token_ids=[1], finish_reason="stop", model=self.spec,
                                    usage=Usage(prompt_tokens=3, completion_tokens=1, time_to_first_token_s=0.2,
                                                decode_tokens_per_s=0.0, total_s=0.2))

        return Response(stream())


def _ask(client: TestClient, name: str, stream: bool) -> int:
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return client.post("/v1/chat/completions", json=body).status_code


def test_two_names_for_one_model_never_drive_it_at_once():
    model = OverlapCountingModel()
    app = create_app({"a": model, "b": model}, ServeSettings(tool_selector=False))
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(_ask, client, name, stream) for name in ("a", "b") for stream in (False, True)]
        assert [j.result() for j in jobs] == [200, 200, 200, 200]
    assert model.calls == 4
    assert model.most_at_once == 1


def test_two_models_still_run_side_by_side():
    first, second = OverlapCountingModel(), OverlapCountingModel()
    app = create_app({"a": first, "b": second}, ServeSettings(tool_selector=False))
    assert app.state.models["a"].worker is not app.state.models["b"].worker
    assert worker_for(first) is app.state.models["a"].worker


def test_a_spec_asked_for_by_many_threads_loads_once():
    registry = Registry()
    loads = []

    def load():
        loads.append(threading.get_ident())
        time.sleep(0.1)
        return object()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: registry.get("embedded", load), range(8)))
    assert len(loads) == 1
    assert all(g is got[0] for g in got)


def test_a_failed_load_leaves_nothing_and_unload_frees_the_entry():
    registry = Registry()

    def broken():
        raise OSError("disk gone")

    try:
        registry.get("hf:/x", broken)
    except OSError:
        pass
    assert registry.keys() == []
    first = registry.get("hf:/x", object)
    assert registry.get("hf:/x", object) is first
    assert registry.unload("hf:/x") is True
    assert registry.unload("hf:/x") is False
    assert registry.get("hf:/x", object) is not first


def test_a_stream_dropped_while_it_waits_never_starts():
    import asyncio

    from slmflow.runtime.worker import ModelWorker

    worker = ModelWorker("m", max_queue=4)
    release = threading.Event()
    started = []

    async def scenario():
        busy = asyncio.ensure_future(worker.run(release.wait))  # the model is busy with someone else
        waiting = asyncio.ensure_future(worker.stream(lambda: started.append(1) or iter(["x"])))
        await asyncio.sleep(0.05)
        waiting.cancel()  # the client goes away while its request still waits
        await asyncio.sleep(0.05)
        release.set()
        await busy
        await asyncio.wrap_future(worker.submit(lambda: None))  # whatever was queued has been taken

    asyncio.run(scenario())
    assert started == []
    assert worker._waiting == 0


def _generate_at_once(model, threads: int = 4) -> list[str]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: model.generate("hi").text(), range(threads)))


def test_agents_and_graph_nodes_in_many_threads_drive_a_model_one_call_at_a_time():
    bare = OverlapCountingModel()
    assert _generate_at_once(bare) == ["ok"] * 4 and bare.most_at_once > 1  # what a shared model suffers
    model = OverlapCountingModel()
    viewed = [QueuedModel(model), QueuedModel(model)]  # two callers' views: one worker between them
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda i: viewed[i % 2].generate("hi").text(), range(4)))
    assert texts == ["ok"] * 4 and model.calls == 4 and model.most_at_once == 1


def test_a_call_from_the_models_own_thread_runs_in_place():
    model = OverlapCountingModel()
    view = QueuedModel(model)
    nested = view.worker.submit(lambda: view.generate("hi").text())  # an agent running as a worker job
    assert nested.result(timeout=5) == "ok"


def test_unload_takes_a_spec_as_load_model_does(tmp_path, monkeypatch):
    """``unload("hf:./folder")`` finds the model ``load_model("hf:./folder")`` loaded, which the
    registry holds under the spec as parsed (an absolute path; ``embedded`` as ``embedded:onnx``)."""
    from slmflow.runtime.registry import REGISTRY, unload
    from slmflow.runtime.specs import parse_spec

    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = "hf:model"  # relative: the registry holds it under the absolute path
    assert str(parse_spec(spec)) != spec
    held = REGISTRY.get(str(parse_spec(spec)), object)
    try:
        assert str(parse_spec(spec)) in REGISTRY.keys()
        assert unload(spec) is True and str(parse_spec(spec)) not in REGISTRY.keys()
        assert unload(spec) is False and unload("not a spec at all") is False
    finally:
        REGISTRY.unload(str(parse_spec(spec)))
    assert held is not None
