"""Load test of `agents serve` on loopback: N concurrent OpenAI clients for a fixed time.

Starts `agents serve` (embedded model) as a subprocess, measures each prompt's greedy reply and
latency with one client, then runs ``--clients`` threads for ``--duration`` seconds, half of them
streaming. Every concurrent reply must equal the single-client reply for its prompt (requests are
queued per model; a mixed-up cache or interleaved stream would show here). Stops by itself and
prints one JSON object: errors, mismatches, p50/p95 latency and throughput, with the single-client
baseline measured in the same run.

    python bench/serve_load.py [--clients 8] [--duration 60] [--max-tokens 32]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    server, base = start_server()
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
        ask(client, "warm up", 4, False)
        expected, single_latency, single_tokens = {}, [], 0
        single_start = time.perf_counter()
        for prompt in PROMPTS:
            text, tokens, seconds = ask(client, prompt, args.max_tokens, False)
            expected[prompt] = text
            single_latency.append(seconds)
            single_tokens += tokens
        single_wall = time.perf_counter() - single_start

        latencies: list[float] = []
        errors: list[str] = []
        mismatches = 0
        tokens_total = 0
        lock = threading.Lock()
        stop_at = time.monotonic() + args.duration

        def worker(n: int) -> None:
            nonlocal mismatches, tokens_total
            own = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
            i = n
            while time.monotonic() < stop_at:
                prompt = PROMPTS[i % len(PROMPTS)]
                i += 1
                try:
                    text, tokens, seconds = ask(own, prompt, args.max_tokens, stream=n % 2 == 1)
                except Exception as err:  # every failure is counted and reported, not raised
                    with lock:
                        errors.append(f"{type(err).__name__}: {err}")
                    continue
                with lock:
                    latencies.append(seconds)
                    tokens_total += tokens
                    mismatches += text != expected[prompt]

        load_start = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_wall = time.perf_counter() - load_start
    finally:
        server.terminate()
        server.wait(30)

    print(json.dumps({
        "clients": args.clients, "duration_s": round(load_wall, 1), "max_tokens": args.max_tokens,
        "requests": len(latencies), "errors": len(errors), "first_errors": errors[:3], "mismatched_outputs": mismatches,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
        "throughput_req_per_s": round(len(latencies) / load_wall, 2),
        "throughput_tokens_per_s": round(tokens_total / load_wall, 1),
        "single_client": {"requests": len(PROMPTS), "latency_p50_s": round(statistics.median(single_latency), 3),
                          "throughput_req_per_s": round(len(PROMPTS) / single_wall, 2),
                          "throughput_tokens_per_s": round(single_tokens / single_wall, 1)},
        "throughput_ratio_vs_single": round((tokens_total / load_wall) / (single_tokens / single_wall), 2),
    }, indent=1))


if __name__ == "__main__":
    main()
