"""The embedded model's one-time conversion never leaves a half model behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from slmflow.runtime import embedded


def test_a_failed_build_leaves_nothing_that_loads(tmp_path):
    final = tmp_path / "model"

    def half_then_crash(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        embedded._build_atomically(final, half_then_crash, "test")
    assert not final.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".model.lock"]  # no temp folder; the builders' lock file


def test_a_completed_build_is_marked_and_in_place(tmp_path):
    final = embedded._build_atomically(tmp_path / "model", lambda tmp: (tmp / "w.bin").write_bytes(b"x"), "t")
    assert embedded.is_complete(final)
    assert (final / "w.bin").read_bytes() == b"x"


_BUILDER = """
import sys, time
from pathlib import Path
from slmflow.runtime import embedded

final, who = Path(sys.argv[1]), sys.argv[2]
second_ready = final.parent / "second-ready"

def build(tmp):
    (tmp / "started").write_text(who)
    deadline = time.time() + 60
    while who == "first" and not second_ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # the second is inside _build_atomically by now
    (tmp / "who").write_text(who)

if who == "second":
    second_ready.touch()
embedded._build_atomically(final, build, who)
print((final / "who").read_text())
"""


@pytest.mark.slow  # runs the CLI in a subprocess
def test_a_second_builder_waits_for_the_first_and_keeps_its_build(tmp_path):
    """Two processes building one folder at once: the second must neither delete the first's
    temp folder (as it would an interrupted run's) nor build again."""
    final = tmp_path / "model"
    first = subprocess.Popen([sys.executable, "-c", _BUILDER, str(final), "first"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".model.tmp-*/started")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".model.tmp-*/started")), "the first build should have started"
    second = subprocess.run([sys.executable, "-c", _BUILDER, str(final), "second"], check=False,
                            capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert out.strip() == second.stdout.strip() == "first"
    assert embedded.is_complete(final) and not list(tmp_path.glob(".model.tmp-*"))


@pytest.mark.slow  # runs the CLI in a subprocess
def test_killed_conversion_leaves_no_loadable_model_and_next_run_cleans_up(tmp_path):
    env = {**os.environ, "SLMFLOW_CACHE_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", "from slmflow.runtime import embedded; embedded.ensure_hf()"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = tmp_path / "models" / embedded.EMBEDDED_NAME
    deadline = time.time() + 60
    while time.time() < deadline and not any(root.glob(".hf.tmp-*")):
        time.sleep(0.2)
    time.sleep(1.0)  # let it write part of the model
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(root.glob(".hf.tmp-*")), "the conversion should have been caught mid-way"
    assert not (root / "hf").exists()
    check = subprocess.run(
        [sys.executable, "-c", "from slmflow.runtime import embedded; print(embedded.state().hf_ready)"],
        env=env, capture_output=True, text=True, check=True,
    )
    assert check.stdout.strip() == "False"


@pytest.mark.slow  # runs the CLI in a subprocess
def test_models_command_lists_the_embedded_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slmflow.cli", "models", "--json"], capture_output=True,
                          text=True, cwd=tmp_path, check=True)
    assert "embedded (onnx int4)" in proc.stdout
    assert "role mini" in proc.stdout
