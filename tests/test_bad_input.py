"""User errors end in one clear line naming the problem and the fix, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from serving import free_port
from slmflow.runtime import load_model
from slmflow.runtime.errors import ModelLoadError, ModelSpecError, PromptError


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmflow.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.slow  # runs the CLI in a subprocess
def test_unknown_model_spec(tmp_path):
    proc = run_cli("generate", "hi", "--model", "nosuchthing", cwd=tmp_path)
    assert_one_line_error(proc, "unknown model spec 'nosuchthing'", "hf:PATH")


@pytest.mark.slow  # runs the CLI in a subprocess
def test_missing_model_folder(tmp_path):
    proc = run_cli("generate", "hi", "--model", f"hf:{tmp_path}/absent", cwd=tmp_path)
    assert_one_line_error(proc, "does not exist", "absent")


@pytest.mark.slow  # runs the CLI in a subprocess
def test_corrupt_onnx_folder(tmp_path):
    (tmp_path / "genai_config.json").write_text("{ not json")
    proc = run_cli("generate", "hi", "--model", f"onnx:{tmp_path}", cwd=tmp_path)
    assert_one_line_error(proc, "genai_config.json", "missing or corrupt")


def test_folder_that_is_no_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelSpecError, match="is not a model"):
        load_model(str(tmp_path))


def test_hf_folder_with_truncated_weights(tmp_path, tiny_phi3_dirs):
    hf_dir, _ = tiny_phi3_dirs
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in hf_dir.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    with pytest.raises(ModelLoadError, match="cannot load model weights"):
        load_model(f"hf:{broken}")


@pytest.mark.slow  # runs the CLI in a subprocess
def test_empty_prompt(tmp_path):
    proc = run_cli("generate", "   ", cwd=tmp_path)
    assert_one_line_error(proc, "the prompt is empty")


def test_prompt_longer_than_the_context_window(tiny_phi3_dirs):
    model = load_model(f"hf:{tiny_phi3_dirs[0]}")
    with pytest.raises(PromptError, match=r"has \d+ tokens but .* context window of 256"):
        model.generate("word " * 400)


@pytest.mark.slow  # runs the CLI in a subprocess
def test_unknown_role(tmp_path):
    proc = run_cli("generate", "hi", "--role", "painter", cwd=tmp_path)
    assert_one_line_error(proc, "unknown role 'painter'", "mini, vision, moe")


@pytest.mark.slow  # runs the CLI in a subprocess
def test_bad_config_field(tmp_path):
    (tmp_path / "slmflow.toml").write_text('[roles]\nmini = "embedded"\nartist = "x"\n')
    proc = run_cli("generate", "hi", "--role", "mini", cwd=tmp_path)
    assert_one_line_error(proc, "slmflow.toml", "roles.artist")


@pytest.mark.slow  # runs the CLI in a subprocess
def test_unreachable_endpoint_is_named_with_the_fix(tmp_path):
    proc = run_cli("generate", "hi", "--model", f"openai:phi-3.5@http://127.0.0.1:{free_port()}/v1", cwd=tmp_path)
    assert_one_line_error(proc, "cannot reach http://127.0.0.1:", "start the server or check the URL")
