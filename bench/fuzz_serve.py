"""Hostile requests against a loopback `agents serve`: none may get a 5xx, hang, or grow the server.

Hypothesis generates the requests: bodies that are any JSON (deeply nested, huge numbers, NaN
written out, lone surrogates), valid chat requests with one field replaced by a generated value,
bodies that are not JSON at all, and odd content types, sent to both APIs' chat routes. Every
reply must come within ``--timeout`` seconds with a status below 500; the server's RSS is read
before and after; a good request must then be answered with text. Prints one JSON object.

    python bench/fuzz_serve.py [--n 2000] [--timeout 30]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_load import start_server

ROUTES = ["/v1/chat/completions", "/api/chat"]
GOOD = {"model": "embedded", "messages": [{"role": "user", "content": "What do bees make?"}], "max_tokens": 4,
        "stream": False}
FIELDS = ["model", "messages", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "tools",
          "tool_choice", "options", "frequency_penalty", "presence_penalty", "response_format", "format", "n",
          "logprobs", "keep_alive", "think"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**80, max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                    st.sampled_from(["\ud800", "user", "assistant", "tool", "system", "", "{bad", "[]"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from([*FIELDS, "role", "content", "tool_calls",
                                                              "function", "arguments", "type", "text",
                                                              "images", "name"]) | st.text(max_size=8),
                                             inner, max_size=5), max_leaves=20)


def _message_like(value):
    return {"role": "user", "content": value}


mutated = st.builds(lambda field, value: {**GOOD, field: value}, st.sampled_from(FIELDS), json_values)
bad_messages = st.builds(lambda msgs: {**GOOD, "messages": msgs},
                         st.lists(st.one_of(json_values, json_values.map(_message_like)), max_size=4))


def _encode(body) -> bytes:
    text = json.dumps(body, allow_nan=True, ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")  # lone surrogates reach the server as such


bodies = st.one_of(mutated.map(_encode), bad_messages.map(_encode), json_values.map(_encode),
                   st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
requests = st.tuples(st.sampled_from(ROUTES), bodies,
                     st.sampled_from(["application/json", None, "text/plain", "multipart/form-data"]))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _reply_text(reply: httpx.Response) -> str:
    return reply.json()["choices"][0]["message"]["content"] if reply.status_code == 200 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    server, base = start_server("--max-tokens", "8")
    statuses: Counter[int] = Counter()
    fives: list[dict] = []
    hangs: list[str] = []
    try:
        client = httpx.Client(base_url=base, timeout=args.timeout)
        greedy = {**GOOD, "temperature": 0}
        before = _reply_text(client.post(ROUTES[0], json=greedy))  # warm, and the reply to compare with
        rss_before = rss_kib(server.pid)
        rss_every_500: list[float] = []
        started = time.perf_counter()

        @settings(max_examples=args.n, database=None, derandomize=True, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(requests)
        def probe(request) -> None:
            route, body, content_type = request
            headers = {"content-type": content_type} if content_type else {}
            try:
                reply = client.post(route, content=body, headers=headers)
            except httpx.TimeoutException:
                hangs.append(body[:200].decode("utf-8", "replace"))
                return
            statuses[reply.status_code] += 1
            if sum(statuses.values()) % 500 == 0:
                rss_every_500.append(round(rss_kib(server.pid) / 1024, 1))
            if reply.status_code >= 500:
                fives.append({"route": route, "status": reply.status_code,
                              "body": body[:300].decode("utf-8", "replace"), "reply": reply.text[:300]})

        probe()
        seconds = time.perf_counter() - started
        rss_after = rss_kib(server.pid)
        good = client.post(ROUTES[0], json=greedy)
        text = _reply_text(good)
        ollama = client.post(ROUTES[1], json=GOOD)
        print(json.dumps({
            "requests": sum(statuses.values()) + len(hangs), "statuses": dict(sorted(statuses.items())),
            "5xx": len(fives), "hangs": len(hangs), "seconds": round(seconds, 1),
            "rss_before_mib": round(rss_before / 1024, 1), "rss_after_mib": round(rss_after / 1024, 1),
            "rss_growth_pct": round(100 * (rss_after - rss_before) / rss_before, 1) if rss_before else math.nan,
            "rss_mib_every_500": rss_every_500,
            "good_after": {"openai_status": good.status_code, "greedy_text": text, "same_as_before": text == before,
                           "ollama_status": ollama.status_code},
            "server_alive": server.poll() is None, "first_5xx": fives[:5], "first_hangs": hangs[:3],
        }, indent=1))
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
