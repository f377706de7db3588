"""Starting real servers for tests: ``agents serve``'s app in a thread, and commands (llama-cpp-python's
server, ``chroma run``) as subprocesses, each on a free loopback port and waited for until it answers."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {tail}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@contextmanager
def app_server(app):
    """Serve an ASGI app on a free port in a background thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/", 30)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def command_server(args: list[str], health_path: str, log: Path, timeout_s: float = 120):
    """Run a server command with ``{port}`` filled in, its output in ``log`` (a pipe nobody reads
    would fill and stall it); yields its base URL."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([a.format(port=port) for a in args], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + health_path, timeout_s, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
