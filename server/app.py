"""``dscbatch serve``: OpenAI's Files and Batches routes over dscbatch jobs (FastAPI on uvicorn).

Routes stay thin: authentication is one dependency, each route calls one store or service method, and every
refusal is an :class:`ApiError` rendered in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``
with the status the ``openai`` SDK maps to its exceptions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from dscbatch.core import threads
from dscbatch.core.errors import ApiError
from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.tokenizer import model_name
from dscbatch.server.advancer import BatchAdvancer
from dscbatch.server.batches import BatchService
from dscbatch.server.files import FileStore
from dscbatch.server.keys import ApiKeys
from dscbatch.server.metrics import ServerMetrics
from dscbatch.server.models import (
    Batch,
    BatchCreate,
    ErrorBody,
    ErrorDetail,
    FileDeleted,
    FileObject,
    ModelList,
    ModelObject,
    Page,
)
from dscbatch.server.upload import Upload

log = logging.getLogger(__name__)
READ_BYTES = 1 << 20


def _owner(request: Request) -> str:
    """The owner id of the request's API key (401 without a valid one)."""
    keys: ApiKeys = request.app.state.keys
    return keys.owner(request.headers.get("authorization"))


Owner = Annotated[str, Depends(_owner)]


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return _error(error.status, error.message, error.type, error.param, error.code)

    async def invalid_request(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path"))
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        return _error(400, f"{field or 'body'}: {message}", "invalid_request_error", field or None)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        message = f"Unknown route {request.method} {request.url.path}" if error.status_code == 404 else str(
            error.detail)
        return _error(error.status_code, message, "invalid_request_error")

    async def server_error(request: Request, error: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return _error(500, f"The server failed: {type(error).__name__}: {error}", "server_error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, server_error)


def create_app(settings: Settings, models: Sequence[str]) -> FastAPI:
    """The API for ``models`` (directories or hub ids whose tokenizers render the batches' requests)."""
    from dscbatch.core.celery_app import make_app, shard_enqueuer

    store = JobStore.connect(settings)
    keys = ApiKeys(store)
    files = FileStore(store, settings.files_url)
    celery = make_app(settings)
    batches = BatchService(settings, store, files, {model_name(model): model for model in models},
                           lambda: shard_enqueuer(celery))
    metrics = ServerMetrics()
    advancer = BatchAdvancer(batches)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        advancer.start()
        yield
        advancer.stop()

    app = FastAPI(title="dscbatch Batch API", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.middleware("http")(metrics.middleware)
    app.state.keys = keys
    _install_error_handlers(app)

    @app.post("/v1/files")
    async def upload_file(request: Request, who: Owner) -> FileObject:
        upload = Upload(files, who, settings.max_file_bytes)
        return await upload.receive(request.headers.get("content-type", ""), request.headers.get("content-length"),
                                    request.stream())

    @app.get("/v1/files")
    def list_files(who: Owner, limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
                   after: str | None = None) -> Page[FileObject]:
        return files.list(who, limit, after)

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str, who: Owner) -> FileObject:
        return files.get(file_id, who)

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, who: Owner) -> StreamingResponse:
        files.get(file_id, who)  # a 404 before the response starts

        def chunks() -> Iterator[bytes]:
            with files.open(file_id, who) as stream:
                while chunk := stream.read(READ_BYTES):
                    yield chunk

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, who: Owner) -> FileDeleted:
        return files.delete(file_id, who)

    @app.post("/v1/batches")
    def create_batch(body: BatchCreate, who: Owner) -> Batch:
        return batches.create(who, body)

    @app.get("/v1/batches")
    def list_batches(who: Owner, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                     after: str | None = None) -> Page[Batch]:
        return batches.list(who, limit, after)

    @app.get("/v1/batches/{batch_id}")
    def get_batch(batch_id: str, who: Owner) -> Batch:
        return batches.get(batch_id, who)

    @app.post("/v1/batches/{batch_id}/cancel")
    def cancel_batch(batch_id: str, who: Owner) -> Batch:
        return batches.cancel(batch_id, who)

    @app.get("/v1/models")
    def list_models(who: Owner) -> ModelList:
        started: dict[str, float] = {}
        for info in store.workers().values():
            started[info["model"]] = min(started.get(info["model"], info["started"]), info["started"])
        return ModelList(data=[ModelObject(id=name, created=int(when)) for name, when in sorted(started.items())])

    @app.get("/metrics", include_in_schema=False)
    def scrape() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        store.ping()
        if dead := threads.gone():  # the batch advancer: without it no batch would ever end
            return JSONResponse({"ok": False, "gone": dead}, status_code=503)
        return JSONResponse({"ok": True})

    return app


def run_server(settings: Settings, models: Sequence[str], host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(settings, models), host=host, port=port, log_level="info")
