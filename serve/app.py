"""The FastAPI app of ``agents serve``: both APIs, access and size limits, and errors that name what
was wrong. Errors keep each API's own shape: ``{"error": {"message": ...}}`` under ``/v1``,
``{"error": "..."}`` under ``/api``. No request error stops the server."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from slmflow.runtime.constraints import ConstraintError, StructuredOutputError
from slmflow.runtime.errors import EndpointError, PromptError, SlmflowError
from slmflow.runtime.registry import worker_for
from slmflow.runtime.tool_selection import ToolSelector
from slmflow.runtime.worker import QueueFullError
from slmflow.serve import ollama_api, openai_api
from slmflow.serve.state import ServedModel, ServeError, ServeSettings

_STATUS = [(PromptError, 400), (ConstraintError, 400), (QueueFullError, 429), (StructuredOutputError, 502),
           (EndpointError, 502)]


def error_response(request: Request, status: int, message: str, param: str | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 429 else None
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status, headers=headers)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status,
                        headers=headers)


def _validation_message(err: RequestValidationError) -> str:
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"invalid request: {where or 'body'}: {first.get('msg')} (got {str(first.get('input'))[:80]!r})"


class BodyLimit:
    """Refuse request bodies above ``limit`` bytes with 413, counting what arrives when the client
    sends no Content-Length (pure ASGI, so a large body is never read whole into memory)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(Request(scope), 413, f"the request body is larger than {self.limit} bytes")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(models: dict[str, object], settings: ServeSettings | None = None) -> FastAPI:
    """The app serving ``models`` (name → loaded model) under ``settings``."""
    settings = settings or ServeSettings()
    app = FastAPI(title="slmflow", version="1", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.selector = ToolSelector() if settings.tool_selector else None
    # One worker per model, not per name: two names for one model must not drive it at once.
    app.state.models = {name: ServedModel(model, worker_for(model, settings.max_queue))
                        for name, model in models.items()}
    app.include_router(openai_api.router)
    app.include_router(ollama_api.router)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if settings.api_key is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                return error_response(request, 401, "missing or wrong API key; send 'Authorization: Bearer KEY'")
        return await call_next(request)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError):
        return error_response(request, err.status, err.message, err.param)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        return error_response(request, 400, _validation_message(err))

    @app.exception_handler(SlmflowError)
    async def runtime_error(request: Request, err: SlmflowError):
        status = next((code for kind, code in _STATUS if isinstance(err, kind)), 500)
        return error_response(request, status, str(err))

    @app.get("/")
    async def root():
        return {"status": "ok", "models": list(app.state.models)}

    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    return app
