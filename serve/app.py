"""The FastAPI app of ``agents serve``: both APIs, access and size limits, and errors that name what
was wrong. Errors keep each API's own shape: ``{"error": {"message": ...}}`` under ``/v1``,
``{"error": "..."}`` under ``/api``. No request error stops the server."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from slmflow.runtime.constraints import ConstraintError, StructuredOutputError
from slmflow.runtime.errors import EndpointError, PromptError, SlmflowError
from slmflow.runtime.registry import worker_for
from slmflow.runtime.tool_selection import ToolSelector
from slmflow.runtime.worker import ClientGone, QueueFullError
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


def _field_path(loc: tuple) -> str:
    """``messages.0.content.1.text``: the body's field, without pydantic's union-member tags
    (``list[ContentPart]``, ``str``) that mean nothing to a client."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(p for p in parts if "[" not in p and p not in ("str", "int", "float", "dict", "list", "none"))


def _validation_message(err: RequestValidationError) -> str:
    """The first error, or within it the deepest (a content list's bad part, not "not a string")."""
    errors = err.errors()
    first = max(errors, key=lambda e: (e.get("loc", ())[:2] == errors[0].get("loc", ())[:2], len(e.get("loc", ()))))
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    return (f"invalid request: {_field_path(first.get('loc', ())) or 'body'}: {first.get('msg')} "
            f"(got {str(first.get('input'))[:80]!r})")


class BodyLimit:
    """Refuse request bodies above ``limit`` bytes with 413 and read every body as JSON.

    A body without Content-Length (chunked) is read here up to the limit before the app sees it,
    so a large one is refused 413 without being held whole in memory. Bodies are JSON whatever
    Content-Type says: Ollama's own curl examples send none, or curl's form default."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await self._refuse(scope, receive, send)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers[b"content-type"] = b"application/json"
        headers[b"content-length"] = str(len(body)).encode()
        scope = {**scope, "headers": list(headers.items())}
        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(Request(scope), 413, f"the request body is larger than {self.limit} bytes")
        await response(scope, receive, send)


def _key_matches(header: str, key: str) -> bool:
    """Exactly ``Bearer KEY``: no other scheme, no missing scheme, no stray spaces."""
    return hmac.compare_digest(header.encode(), f"Bearer {key}".encode())


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
            if not _key_matches(request.headers.get("authorization", ""), settings.api_key):
                return error_response(request, 401, "missing or wrong API key; send 'Authorization: Bearer KEY'")
        return await call_next(request)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError):
        return error_response(request, err.status, err.message, err.param)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        return error_response(request, 400, _validation_message(err))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone):
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.exception_handler(SlmflowError)
    async def runtime_error(request: Request, err: SlmflowError):
        status = next((code for kind, code in _STATUS if isinstance(err, kind)), 500)
        return error_response(request, status, str(err))

    @app.get("/")
    async def root():
        return {"status": "ok", "models": list(app.state.models)}

    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    return app
