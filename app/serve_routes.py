"""The routes of `bsegn serve` (see bsegn.app.serve for the API): FastAPI, imported only when serving."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from bsegn.app.serve_engine import Busy, RequestError
from bsegn.core.files import json_safe
from bsegn.core.logs import get_logger

log = get_logger(__name__)
JSON_LIMIT = 4_000_000  # bytes of a JSON request (a CSV of many classes fits)
MULTIPART_OVERHEAD = 64_000
# classes one /classes call may add: each costs its synthetic features and the refits are redone for all at
# once, and the served model takes no other change meanwhile (200 rows held it for 97 s on 2 cores)
MAX_CLASSES_PER_CALL = 50
TRUE = ("1", "true", "on", "yes")
STATIC = {"serve.js": "text/javascript; charset=utf-8", "serve.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
                               "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
}
ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP"}  # MPO: a phone camera's JPEG


def upload_label(filename: str | None) -> str:
    """The client's file name, used only as a label: its last component, printable, at most 120 characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:120]
    return name or "upload"


def decode_upload(data: bytes, label: str, transform, limits):
    """Upload bytes -> the bundle's transformed image tensor, or RequestError (400/413/415/422).

    The format and size come from the header first (no pixel decoded); the image is then decoded by
    bsegn's own open_rgb, as predict does, from an in-memory file (nothing is written to disk)."""
    import io
    import warnings

    from PIL import Image

    from bsegn.app.serve_engine import RequestError
    from bsegn.datasets.images import ImageError, open_rgb

    if not data:
        raise RequestError(400, f"{label}: the upload is empty (0 bytes); choose an image file")
    if len(data) > limits.max_bytes:
        raise RequestError(413, f"{label}: {len(data)} bytes, over this server's limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                kind, (width, height) = probe.format, probe.size
    except Image.DecompressionBombError:
        raise RequestError(413, f"{label}: the image is far too large to decode safely") from None
    except (OSError, SyntaxError, ValueError):
        raise RequestError(415, f"{label}: not an image (send a JPEG, PNG, WebP or BMP file)") from None
    if kind == "GIF":
        raise RequestError(415, f"{label}: GIF is not accepted (often animated: only one frame would be classified); "
                                "send a JPEG, PNG, WebP or BMP file")
    if kind not in ACCEPTED_FORMATS:
        raise RequestError(415, f"{label}: {kind} images are not accepted; send a JPEG, PNG, WebP or BMP file")
    if width * height > limits.max_pixels:
        raise RequestError(413, f"{label}: {width}x{height} = {width * height} pixels, over this server's limit of "
                                f"{limits.max_pixels}; downscale it")
    with _memory_file(data) as path:
        try:
            image = open_rgb(path, max_pixels=limits.max_pixels)
        except ImageError as error:
            raise RequestError(422, str(error).replace(str(path), label)) from None
    return transform(image)


class _memory_file:
    """A path holding `data` that never reaches the disk (a Linux memfd), else a private temporary
    folder removed on exit."""

    def __init__(self, data: bytes):
        self.data = data

    def __enter__(self):
        import os
        from pathlib import Path

        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            self.fd = os.memfd_create("bsegn-upload", os.MFD_CLOEXEC)
            with os.fdopen(os.dup(self.fd), "wb") as handle:
                handle.write(self.data)
            return Path(f"/proc/self/fd/{self.fd}")
        import tempfile

        self.folder = tempfile.TemporaryDirectory(prefix="bsegn-upload-")
        path = Path(self.folder.name) / "upload"
        path.write_bytes(self.data)
        return path

    def __exit__(self, *exc) -> None:
        import os

        if hasattr(self, "fd"):
            os.close(self.fd)
        else:
            self.folder.cleanup()


class BodyTooLarge(HTTPException):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413, whether its Content-Length
    says so or it streams past the limit (chunked), before it is all read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            response = _json({"error": f"the request body is over this server's limit of {self.limit} bytes"}, 413)
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(413, f"the request body is over this server's limit of {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


class HostCheck:
    """ASGI middleware: a request whose Host header is not one of `allowed` gets a 400 JSON error (DNS
    rebinding: a page elsewhere cannot reach a loopback server through its own name)."""

    def __init__(self, app, allowed: list[str]):
        self.app, self.allowed = app, {name.lower().strip("[]") for name in allowed}

    async def __call__(self, scope, receive, send):
        host = host_name(dict(scope.get("headers") or []).get(b"host", b""))
        if scope["type"] == "http" and host not in self.allowed:
            response = _json({"error": "this server answers only requests addressed to "
                                       f"{' or '.join(sorted(self.allowed))} (the Host header)"}, 400)
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def host_name(header: bytes) -> str:
    """The host of a Host header, without its port: "127.0.0.1:80" -> "127.0.0.1", "[::1]:80" -> "::1"."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def read_form(request: Request, spool_limit: int):
    """The multipart form of `request`, its files held in memory up to `spool_limit` bytes (Starlette's
    default spools every file over 1 MB to a disk file; the body limit keeps a file below `spool_limit`)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        raise RequestError(400, "send the image as a multipart file field named `image`")
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=8)
    parser.spool_max_size = spool_limit
    try:
        return await parser.parse()
    except MultiPartException as error:
        raise RequestError(400, f"the multipart body cannot be read ({error})") from None


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    # json_safe: JSONResponse refuses NaN with a plain-text 500; a number that is not finite is sent as null
    return JSONResponse(json_safe(payload), status_code=status,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", **(headers or {})})


def _top_k(value) -> int:
    if value is None or value == "":
        return 5
    if isinstance(value, str) and value.isdigit() and 1 <= int(value) <= 1000:
        return int(value)
    raise RequestError(400, "top_k must be a whole number from 1 to 1000")


def classes_of(body: dict, dim: int) -> list[tuple[str, list[float]]]:
    """The classes of a /classes body, read by add-class's own parsing (class_inputs): {"csv": TEXT} as
    its CSV files (the header rule included), or {"name", "attributes": "v1,..." or [v1, ...]}; the name
    rule is applied when they are added. RequestError 400 / 413 (over MAX_CLASSES_PER_CALL)."""
    from bsegn.app.class_inputs import attribute_values, parse_attributes_csv
    from bsegn.core.errors import BundleError

    try:
        if body.get("csv") is not None:
            new = parse_attributes_csv(str(body["csv"]), dim, "uploaded CSV")
        else:
            values = body.get("attributes", "")
            values = values if isinstance(values, list) else str(values).split(",")
            name = body.get("name")
            new = [(name, attribute_values(values, dim, "attributes", name if isinstance(name, str) else "the class"))]
    except BundleError as error:
        raise RequestError(400, str(error)) from None
    if len(new) > MAX_CLASSES_PER_CALL:
        raise RequestError(413, f"{len(new)} classes in one call; at most {MAX_CLASSES_PER_CALL} are added at once: "
                                "split the CSV")
    return new


def build_app(engine, *, allowed_hosts: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="bsegn serve", docs_url=None, redoc_url=None)
    folder = Path(__file__).resolve().parent / "static"  # package data beside this module (installed or editable)
    files = {name: (folder / name).read_bytes() for name in (*STATIC, "index.html")}
    state: dict[str, Any] = {}

    body_limit = max(engine.limits.max_bytes + MULTIPART_OVERHEAD, JSON_LIMIT)
    app.add_middleware(BodyLimit, limit=body_limit)
    if allowed_hosts:
        app.add_middleware(HostCheck, allowed=allowed_hosts)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return _json({"error": str(error.detail)}, error.status_code)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect):
        # a closed tab or an aborted upload: nobody reads an answer, and a traceback each would flood the log
        log.debug("serve: %s %s: the client disconnected before its request was read", request.method,
                  request.url.path)
        return _json({"error": "the client disconnected"}, 400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception):
        return _json({"error": f"internal error ({type(error).__name__}); the server log has the details"}, 500)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        return _json({"error": str(error)}, error.status)

    def require_ready() -> None:
        if engine.state == "loading":
            raise HTTPException(503, "the model is still loading; retry in a moment")
        if engine.state != "ready":
            raise HTTPException(500, f"the model failed to load: {engine.error}")

    async def json_body(request: Request) -> dict:
        # JSON only: a cross-site form cannot post it without a CORS preflight, which this server never grants
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise RequestError(415, "send JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except ValueError:
            raise RequestError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    @app.get("/", include_in_schema=False)
    async def page():
        return Response(files["index.html"], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:  # a fixed set of names: no path is ever built from the request
            raise HTTPException(404, "not found")
        return Response(files[name], media_type=STATIC[name], headers=PAGE_HEADERS)

    @app.get("/health")
    async def health():
        batches = dict(engine.batch_sizes)  # one C-level copy: the worker may be counting meanwhile
        return _json({"state": engine.state, "error": engine.error,
                      "batch_sizes": {str(k): v for k, v in batches.items()}})

    @app.get("/model")
    async def model():
        require_ready()
        return _json(engine.describe())

    @app.post("/predict")
    async def predict(request: Request):
        require_ready()
        try:
            engine.admit()
        except Busy as error:
            return _json({"error": str(error)}, 503, {"Retry-After": "1"})
        try:
            form = await read_form(request, body_limit)
            try:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise RequestError(400, "send the image as a multipart file field named `image`")
                top_k, explain = _top_k(form.get("top_k")), str(form.get("explain", "")).lower() in TRUE
                data, label = await upload.read(engine.limits.max_bytes + 1), upload_label(upload.filename)
            finally:
                await form.close()
            if "decoders" not in state:
                import anyio

                state["decoders"] = anyio.CapacityLimiter(engine.limits.decoders)
            import anyio.to_thread

            tensor = await anyio.to_thread.run_sync(decode_upload, data, label, engine.ready_predictor().transform,
                                                    engine.limits, limiter=state["decoders"])
            answer = await asyncio.wrap_future(engine.submit(tensor, top_k=top_k, explain=explain))
        finally:
            engine.release()
        return _json(dataclasses.replace(answer, image=label).to_json())  # predict --json's object

    @app.post("/classes")
    async def add(request: Request):
        require_ready()
        body = await json_body(request)
        new = classes_of(body, int(engine.ready_predictor().bundle.trained.semantic_dim))
        import anyio.to_thread

        added = await anyio.to_thread.run_sync(engine.add_classes, new)
        return _json({"added": added, "model": engine.describe()})

    @app.post("/save")
    async def save(request: Request):
        require_ready()
        body = await json_body(request)
        import anyio.to_thread

        name = await anyio.to_thread.run_sync(engine.save, body.get("name"))
        return _json({"saved": name, "classes": len(engine.ready_predictor().bundle.class_names),
                      "added": list(engine.added)})

    return app
