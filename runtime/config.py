"""Roles → model specs, read from ``slmflow.toml``.

The file is looked for in the working directory first, then in the user config dir::

    [roles]
    mini = "hf:~/models/Phi-3.5-mini-instruct"
    vision = "onnx:~/models/phi-3.5-vision-onnx"
    moe = "ollama:phi3.5-moe"

A role left out falls back to the embedded default, and the fallback is logged once per role so a
user who forgot the file learns it without being told at every call.
"""

from __future__ import annotations

import logging
import sys
from enum import Enum
from pathlib import Path

import platformdirs
from pydantic import BaseModel, ConfigDict, ValidationError
from slmflow.runtime.errors import ConfigError, ModelSpecError
from slmflow.runtime.specs import ModelSpec, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

log = logging.getLogger("slmflow")

CONFIG_NAME = "slmflow.toml"
DEFAULT_SPEC = "embedded"


class Role(str, Enum):
    MINI = "mini"
    VISION = "vision"
    MOE = "moe"


class RolesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mini: str | None = None
    vision: str | None = None
    moe: str | None = None


class SlmflowConfig(BaseModel):
    """The parsed config file; ``source`` is where it came from (None when no file was found)."""

    model_config = ConfigDict(extra="forbid")

    roles: RolesConfig = RolesConfig()
    source: Path | None = None


class _FileConfig(BaseModel):
    """What ``slmflow.toml`` itself may hold."""

    model_config = ConfigDict(extra="forbid")

    roles: RolesConfig = RolesConfig()


_fallback_logged: set[Role] = set()


def config_paths() -> list[Path]:
    return [Path.cwd() / CONFIG_NAME, Path(platformdirs.user_config_dir("slmflow")) / CONFIG_NAME]


def load_config(path: Path | None = None) -> SlmflowConfig:
    """Read the first config file that exists (or ``path``); no file means every role is the default."""
    candidates = [path] if path is not None else config_paths()
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            raw = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read {candidate}: {err}", "fix the TOML syntax") from err
        try:
            # The file's own keys are validated without ``source``: a stray top-level ``source = ...``
            # is an unknown key like any other, not a clash with the path we record.
            config = SlmflowConfig(roles=_FileConfig.model_validate(raw).roles, source=candidate)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"{candidate}: field '{field}': {first['msg']}",
                "allowed: [roles] with keys mini, vision, moe mapping to model specs",
            ) from err
        for role in Role:  # a role naming a missing model fails here, when the file is read, not mid-run
            _configured_spec(config, role)
        return config
    if path is not None:
        raise ConfigError(f"config file {path} does not exist", "check the path")
    return SlmflowConfig()


def spec_for_role(role: Role | str, config: SlmflowConfig | None = None) -> ModelSpec:
    """The spec configured for ``role``, or the embedded default (said once per role)."""
    try:
        role = Role(role)
    except ValueError:
        raise ConfigError(
            f"unknown role '{role}'", f"use one of: {', '.join(r.value for r in Role)}"
        ) from None
    config = config if config is not None else load_config()
    spec = _configured_spec(config, role)
    if spec is None:
        # Said at info level (shown with -v), once per role: most users run on the embedded
        # default on purpose, and `agents models` lists which roles are configured.
        if role not in _fallback_logged:
            _fallback_logged.add(role)
            where = config.source or " or ".join(str(p) for p in config_paths())
            log.info("role '%s' has no model in %s; using the embedded default", role.value, where)
        return parse_spec(DEFAULT_SPEC)
    return spec


def _configured_spec(config: SlmflowConfig, role: Role) -> ModelSpec | None:
    """The role's spec as the config file gives it (None when it gives none), the file and key named
    in the error when the spec is wrong or its path is missing."""
    text = getattr(config.roles, role.value)
    if text is None:
        return None
    try:
        return parse_spec(text)
    except ModelSpecError as err:
        raise ConfigError(f"{config.source}: roles.{role.value}: {err.problem}", err.hint) from err
