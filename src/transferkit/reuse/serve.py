"""``transferkit serve``: a saved run behind FastAPI + uvicorn, with micro-batching.

Why it is shaped this way:

* The model runs in ONE worker thread. Torch and ONNX Runtime already use every core for one
  forward pass, so several concurrent passes only fight over the cores; one thread fed by a
  bounded queue keeps the event loop free to parse requests while the model works.
* Concurrent requests are micro-batched: the worker takes whatever is queued (waiting at most
  ``max_wait_ms`` for more) up to ``max_batch`` examples and runs them as one call of the
  engine, which sorts them by length and runs them in chunks of ``model_batch``. Under load this
  turns N tiny forward passes into a few full ones; with one client it adds at most
  ``max_wait_ms``.
* The queue is bounded: when it is full the server answers 503 with ``Retry-After`` at once
  instead of letting latency grow without limit.
* Every limit (body size, examples per request, text length, image pixels per image and per
  request) is checked before the work it protects (``serve_limits``), and every bad request
  gets a 4xx whose message names the item and the limit.
* Connections are guarded below the app (``serve_http``): read deadlines and a connection cap
  keep slow or half-open clients from locking others out, and SIGTERM answers every accepted
  request, with its result or with a 503 that says the server is shutting down.
* The ONNX engine must not import torch: nothing here imports it, and the engine is loaded
  through ``load_engine`` which imports only what the chosen engine needs.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect

from .. import __version__
from ..artifact.schema import read_json
from ..errors import ArtifactError, ConfigError
from .serve_batching import MicroBatcher, Overloaded
from .serve_http import TIMED_OUT, ConnectionLimits, ShutdownGuard, build_server, run_server
from .serve_limits import (
    INPUT_FIELDS,
    WHAT,
    BodyLimit,
    Limits,
    PredictRequest,
    RequestError,
    decode_audio,
    decode_images,
    example,
    parse_json_request,
    parse_multipart,
)

log = logging.getLogger("transferkit.serve")

JSON_TYPES = {"application/json"}
MULTIPART = "multipart/form-data"
DEFAULT_MODEL_BATCH = {"torch": 8, "onnx": 4}  # fastest measured on a 2-core CPU


@dataclass
class ServeOptions:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue_size: int = 256  # queued requests; beyond it 503 + Retry-After
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)  # serve_http


def create_app(engine: Any, options: ServeOptions | None = None,
               run_dir: str | Path | None = None, engine_name: str = "torch") -> FastAPI:
    """The FastAPI app for one loaded engine (used by ``serve`` and by in-process tests)."""
    options = options or ServeOptions()
    limits = options.limits
    modality = engine.modality
    classes = list(engine.classes)
    batcher = MicroBatcher(engine.predict_proba, options.max_batch, options.max_wait_ms,
                           options.queue_size)
    metadata = _metadata(engine, run_dir, engine_name, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    # The docs are routes of our own, behind the key like the rest: they list the labels.
    app = FastAPI(title="transferkit model server", version=__version__, lifespan=lifespan,
                  description=f"Classifies {WHAT.get(modality, modality)} into: "
                              f"{', '.join(classes)}.",
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(ShutdownGuard)  # outermost: it answers what the shutdown cancels
    expected_key = options.api_key.encode() if options.api_key is not None else None

    def check_key(request: Request) -> None:
        """Either credential may carry the key; an empty header is no credential. Every one
        given is compared, in constant time, so the answer's timing says nothing."""
        if expected_key is None:
            return
        given = [v.strip() for v in request.headers.getlist("x-api-key")]
        for auth in request.headers.getlist("authorization"):
            scheme, _, token = auth.strip().partition(" ")
            if scheme.lower() == "bearer":
                given.append(token.strip())
        ok = False
        for key in given:  # latin-1: the header's bytes as sent (starlette decoded them so)
            if key:
                ok |= hmac.compare_digest(key.encode("latin-1"), expected_key)
        if not ok:
            raise RequestError(401, "Missing or wrong API key: send it in the X-API-Key header "
                                    "or as Authorization: Bearer <key>.")

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"detail": e.message}, status_code=e.status, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, e: ClientDisconnect) -> Response:
        """One log line, not a traceback: a client that goes away is not a server error."""
        client = request.client
        who = f"{client.host}:{client.port}" if client else "a client"
        why = request.scope.get(TIMED_OUT)
        log.info("%s %s %s: %s before the request body was complete; request dropped", who,
                 request.method, request.url.path,
                 f"connection closed by the server ({why})" if why else "client disconnected")
        return Response(status_code=400)  # never sent: the connection is gone

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        check_key(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        check_key(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        check_key(request)
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    @app.get("/health", summary="Liveness: 200 while the server is up (no API key needed).")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata", summary="Labels, backbone, metrics, version and serving counters.")
    async def get_metadata(request: Request) -> dict[str, Any]:
        check_key(request)
        return {**metadata, "serving": batcher.stats()}

    @app.post(
        "/predict", summary="Labels and probabilities for a batch of texts, images or audio.",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            MULTIPART: {"schema": {"type": "object", "properties": {
                field: {"type": "array", "items": {"type": "string", "format": "binary"}}
                for field in ("images", "audio")}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        }}},
        responses={413: {"description": "Body, batch, text, image or the request's pixels "
                                        "over a limit"},
                   415: {"description": "Unsupported media type"},
                   422: {"description": "Malformed request"},
                   503: {"description": "Queue full, or the server shutting down; retry "
                                        "after Retry-After seconds"}},
    )
    async def predict(request: Request) -> Response:
        check_key(request)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media in JSON_TYPES or media.endswith("+json"):
            inputs = parse_json_request(await request.body(), modality, limits)
            names = [f"{INPUT_FIELDS[modality]}[{i}]" for i in range(len(inputs))]
        elif media == MULTIPART:
            if modality == "text":
                raise RequestError(422, f"This model classifies texts; send "
                                        f"{example('text')} as application/json.")
            inputs = await parse_multipart(request, limits)
            names = [f"file {i + 1}" for i in range(len(inputs))]
        elif modality != "text" and media.startswith(f"{modality}/"):
            inputs = [await request.body()]
            names = [f"the {modality} body"]
        else:
            raise RequestError(415, f"Unsupported media type '{media or 'none'}'. Send "
                                    f"application/json ({example(modality)})"
                                    + (f", multipart/form-data with {modality} files, or an "
                                       f"{modality}/* body" if modality != "text" else "") + ".")
        if modality != "text":  # decoding is CPU work: keep it off the event loop
            from starlette.concurrency import run_in_threadpool

            encoded = inputs
            decode = decode_images if modality == "image" else decode_audio
            inputs = await run_in_threadpool(lambda: decode(names, encoded, limits))
        try:
            proba = await batcher.submit(inputs)
        except Overloaded:
            return JSONResponse({"detail": "The server is at capacity (request queue full). "
                                           "Retry shortly."}, status_code=503,
                                headers={"Retry-After": "1"})
        return Response(_predictions_json(engine, classes, proba),
                        media_type="application/json")

    return app


def _predictions_json(engine: Any, classes: list[str], proba: np.ndarray) -> bytes:
    """Built directly: a second pydantic validation of the response cost as much as parsing."""
    labels = engine.labels_from_proba(proba)
    rows = proba.tolist()
    return json.dumps({"predictions": [
        {"label": label, "probabilities": dict(zip(classes, row, strict=True))}
        for label, row in zip(labels, rows, strict=True)]}).encode()


def _metadata(engine: Any, run_dir: str | Path | None, engine_name: str,
              options: ServeOptions) -> dict[str, Any]:
    config = engine.config
    if hasattr(config, "model_dump"):
        config = config.model_dump()
    config = dict(config or {})
    backbone = dict(config.get("backbone") or {})
    metrics: dict[str, Any] = {}
    metrics_note = None  # why there are no metrics, said instead of an empty dict alone
    path = Path(run_dir) / "metrics.json" if run_dir is not None else None
    if path is None or not path.is_file():
        metrics_note = "the run folder has no metrics.json"
    else:
        try:
            full = read_json(path)
            metrics = {k: v for k, v in full.items() if isinstance(v, int | float)} \
                if isinstance(full, dict) else {}
        except (OSError, ArtifactError) as e:
            metrics_note = f"metrics.json could not be read: {e}"
            log.warning("%s", metrics_note)
    strategy = config.get("strategy") or {}
    return {
        "transferkit_version": __version__,
        "model_transferkit_version": config.get("transferkit_version"),
        "run": str(run_dir) if run_dir is not None else None,
        "engine": engine_name,
        "modality": engine.modality,
        "labels": list(engine.classes),
        "multilabel": bool(engine.multilabel),
        "backbone": {k: backbone.get(k) for k in ("source", "modality", "feature_dim",
                                                  "fingerprint") if k in backbone},
        "strategy": strategy.get("name") if isinstance(strategy, dict) else strategy,
        "metrics": metrics,
        **({"metrics_note": metrics_note} if metrics_note else {}),
        "limits": asdict(options.limits),
        "connections": asdict(options.connections),
        "batching": {"max_batch": options.max_batch, "max_wait_ms": options.max_wait_ms,
                     "queue_size": options.queue_size},
    }


# -- running it ------------------------------------------------------------------------------
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve(
    run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, engine: str = "torch",
    int8: bool = False, precision: str = "auto", model_batch: int | None = None,
    max_batch: int = 32, max_wait_ms: float = 5.0, queue_size: int = 256,
    limits: Limits | None = None, connections: ConnectionLimits | None = None,
    api_key_env: str | None = None, access_log: bool = False, log_level: str = "info",
    threads: int | None = None,
) -> None:
    """Load the run once and serve it until SIGTERM / Ctrl-C, which finish in-flight
    requests (or answer them 503 after ``connections.shutdown_timeout_s``) before the process
    exits with status 0."""
    from .engines import load_engine

    if engine not in DEFAULT_MODEL_BATCH:
        raise ConfigError(f"Unknown --engine '{engine}': use torch or onnx.")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {api_key_env}: the environment variable "
                              f"{api_key_env} is not set or empty. Export the key first, e.g. "
                              f"export {api_key_env}=$(openssl rand -hex 16).")
    # OpenMP workers that spin-wait between ops steal the core the event loop needs; on shared
    # cores this was measured to slow a one-text torch forward pass from 23 ms to 1,160 ms.
    # (Only effective before torch is imported, which the CLI path guarantees.)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..recommend.recommender import is_recommender_run

    if is_recommender_run(run_dir):  # a `recommend fit` run: POST /recommend instead
        from .serve_recommend import serve_recommender

        return serve_recommender(run_dir, host=host, port=port, api_key=api_key,
                                 limits=limits, connections=connections,
                                 access_log=access_log, log_level=log_level)
    start = time.perf_counter()
    loaded = load_engine(run_dir, engine=engine, int8=int8, precision=precision,
                         batch_size=model_batch or DEFAULT_MODEL_BATCH[engine])
    if threads is not None and engine == "torch":
        import torch

        torch.set_num_threads(max(1, threads))
    options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                           limits=limits or Limits(), api_key=api_key,
                           connections=connections or ConnectionLimits())
    app = create_app(loaded, options, run_dir=run_dir,
                     engine_name=f"{engine}{' int8' if int8 else ''}")
    server = build_server(app, host=host, port=port, limits=options.connections,
                          log_level=log_level, access_log=access_log)
    log.info("loaded %s (%s engine%s; labels: %s) in %.1f s; docs at http://%s:%d/docs",
             run_dir, engine, " int8" if int8 else "", ", ".join(loaded.classes),
             time.perf_counter() - start, host, port)
    if host not in LOOPBACK and api_key is None:
        log.warning("binding to %s without an API key: anyone who can reach this address can "
                    "use the model. Pass --api-key-env VAR to require a key.", host)
    run_server(server)
