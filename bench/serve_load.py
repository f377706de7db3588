"""Load test of `agents serve` on loopback: N concurrent OpenAI clients for a fixed time.

Starts `agents serve` (embedded model) as a subprocess, takes each prompt's greedy reply with one
client, then alternates phases of ``--duration`` seconds: one client asking in a loop, then
``--clients`` threads (half of them streaming), ``--rounds`` times (A B A B). Every reply must
equal the single-client reply for its prompt (the scheduler batches concurrent requests; a
mixed-up slot, cache or stream would show here). Prints one JSON object: errors, mismatches, each
phase's tokens/s, the ratio of the medians, and the concurrent p95 latency over one request's.

    python bench/serve_load.py [--clients 8] [--duration 30] [--rounds 2] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx
import openai

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about autumn leaves.",
    "List three uses of a paperclip.",
    "Why is the sky blue?",
    "Give me a tip for learning Python.",
    "What do bees make?",
    "Name a famous painter.",
    "How many legs does a spider have?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(client: openai.OpenAI, prompt: str, max_tokens: int, stream: bool) -> tuple[str, int, float]:
    start = time.perf_counter()
    kwargs = {"model": "embedded", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
              "max_tokens": max_tokens}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        tokens = chunks[-1].usage.completion_tokens
    else:
        reply = client.chat.completions.create(**kwargs)
        text, tokens = reply.choices[0].message.content, reply.usage.completion_tokens
    return text, tokens, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_server(*flags: str) -> tuple[subprocess.Popen, str]:
    """`agents serve` (embedded model) on a free loopback port, once it answers: (process, base URL)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "slmflow.cli", "serve", "--port", str(port), *flags],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            httpx.get(base + "/", timeout=2)
            return server, base
        except httpx.TransportError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("agents serve did not start") from None
            time.sleep(0.5)


def run_threads(worker, n: int) -> float:
    """Run ``worker(0)`` … ``worker(n - 1)`` in threads at once; the seconds until all are done."""
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def load_phase(base: str, clients: int, duration: float, max_tokens: int,
               expected: dict[str, str]) -> dict:
    """``clients`` threads asking in a loop for ``duration`` seconds (odd ones streaming): requests,
    tokens, latencies, errors, and replies that differ from the single-client reply."""
    latencies: list[float] = []
    errors: list[str] = []
    counts = {"mismatches": 0, "tokens": 0}
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def worker(n: int) -> None:
        own = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
        i = n
        while time.monotonic() < stop_at:
            prompt = PROMPTS[i % len(PROMPTS)]
            i += 1
            try:
                text, tokens, seconds = ask(own, prompt, max_tokens, stream=n % 2 == 1)
            except Exception as err:  # every failure is counted and reported, not raised
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")
                continue
            with lock:
                latencies.append(seconds)
                counts["tokens"] += tokens
                counts["mismatches"] += text != expected[prompt]

    wall = run_threads(worker, clients)
    return {"clients": clients, "wall_s": wall, "requests": len(latencies), "errors": errors,
            "mismatches": counts["mismatches"], "tokens_per_s": counts["tokens"] / wall, "latencies": latencies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=2, help="single-client then N-client phases, alternated")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    server, base = start_server()
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
        ask(client, "warm up", 4, False)
        expected = {prompt: ask(client, prompt, args.max_tokens, False)[0] for prompt in PROMPTS}
        single, many = [], []
        for _ in range(args.rounds):  # A B A B: machine noise hits both alike
            single.append(load_phase(base, 1, args.duration, args.max_tokens, expected))
            many.append(load_phase(base, args.clients, args.duration, args.max_tokens, expected))
    finally:
        server.terminate()
        server.wait(30)

    def rate(phases):
        return statistics.median(p["tokens_per_s"] for p in phases)

    one_latency = statistics.median(x for p in single for x in p["latencies"])
    many_latencies = [x for p in many for x in p["latencies"]]
    errors = [e for p in single + many for e in p["errors"]]
    print(json.dumps({
        "clients": args.clients, "rounds": args.rounds, "phase_s": args.duration, "max_tokens": args.max_tokens,
        "requests": sum(p["requests"] for p in single + many), "errors": len(errors), "first_errors": errors[:3],
        "mismatched_outputs": sum(p["mismatches"] for p in single + many),
        "single_client_tokens_per_s": [round(p["tokens_per_s"], 1) for p in single],
        "concurrent_tokens_per_s": [round(p["tokens_per_s"], 1) for p in many],
        "throughput_ratio_vs_single": round(rate(many) / rate(single), 2),
        "single_request_latency_p50_s": round(one_latency, 3),
        "concurrent_latency_p50_s": round(statistics.median(many_latencies), 3),
        "concurrent_latency_p95_s": round(percentile(many_latencies, 0.95), 3),
        "p95_over_single_p50": round(percentile(many_latencies, 0.95) / one_latency, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
