"""Model specs and the role config."""

from __future__ import annotations

import logging

import pytest
from slmflow.runtime import SpecKind, parse_spec
from slmflow.runtime.config import load_config, spec_for_role
from slmflow.runtime.errors import ConfigError, ModelSpecError


def test_spec_forms(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "genai_config.json").write_text("{}")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert parse_spec("embedded").kind is SpecKind.EMBEDDED
    assert str(parse_spec("embedded:transformers")) == "embedded:transformers"
    assert parse_spec(str(tmp_path / "m.gguf")).kind is SpecKind.GGUF
    assert parse_spec(str(onnx)).kind is SpecKind.ONNX
    assert parse_spec(str(hf)).kind is SpecKind.HF
    assert parse_spec(f"hf:{hf}").location == str(hf.resolve())
    assert parse_spec("ollama:phi3.5").location == "phi3.5"
    spec = parse_spec("openai:phi-3.5-mini@http://127.0.0.1:8000/v1")
    assert (spec.location, spec.base_url) == ("phi-3.5-mini", "http://127.0.0.1:8000/v1")


@pytest.mark.parametrize(
    "text, message",
    [("", "empty model spec"), ("embedded:tpu", "unknown backend 'tpu'"), ("hf:", "names no model"),
     ("openai:gpt", "lacks a model or a base URL"), ("hf:/no/such/dir", "does not exist")],
)
def test_bad_specs_name_the_problem(text, message):
    with pytest.raises(ModelSpecError, match=message):
        parse_spec(text)


def test_roles_come_from_slmflow_toml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slmflow.toml").write_text('[roles]\nmoe = "embedded:transformers"\n')
    assert str(spec_for_role("moe")) == "embedded:transformers"


def test_unconfigured_role_falls_back_to_embedded_and_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    from slmflow.runtime import config

    config._fallback_logged.clear()
    with caplog.at_level(logging.INFO, logger="slmflow"):
        first = spec_for_role("vision")
        second = spec_for_role("vision")
    assert first == second == parse_spec("embedded")
    said = [r for r in caplog.records if "role 'vision' has no model" in r.message]
    assert len(said) == 1 and said[0].levelno == logging.INFO  # shown with -v, not on every command (#26)


def test_config_with_a_bad_spec_names_the_file_and_role(tmp_path):
    path = tmp_path / "slmflow.toml"
    path.write_text('[roles]\nmini = "hf:/missing/model"\n')
    with pytest.raises(ConfigError, match=r"slmflow.toml: roles.mini: model path '/missing/model'"):
        spec_for_role("mini", load_config(path))


def test_config_with_broken_toml(tmp_path):
    path = tmp_path / "slmflow.toml"
    path.write_text("[roles\n")
    with pytest.raises(ConfigError, match="fix the TOML syntax"):
        load_config(path)
