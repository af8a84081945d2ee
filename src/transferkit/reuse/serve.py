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
* Every limit (body size, examples per request, text length, image pixels) is checked before
  the work it protects (the body while it streams, image sizes from the header before
  decoding), and every bad request gets a 4xx whose message names the item and the limit.
* The ONNX engine must not import torch: nothing here imports it, and the engine is loaded
  through ``load_engine`` which imports only what the chosen engine needs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..errors import ConfigError

log = logging.getLogger("transferkit.serve")

JSON_TYPES = {"application/json"}
MULTIPART = "multipart/form-data"
DEFAULT_MODEL_BATCH = {"torch": 8, "onnx": 4}  # fastest measured on a 2-core CPU


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is checked before the work it protects."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_examples: int = 64
    max_text_chars: int = 10_000
    max_image_pixels: int = 40_000_000  # 40 MP: any camera photo, not a decompression bomb


@dataclass
class ServeOptions:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue_size: int = 256  # queued requests; beyond it 503 + Retry-After
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None


class PredictRequest(BaseModel):
    """A JSON batch: ``texts`` for a text model, ``images`` (base64 or data URLs) for an image
    model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[str] | None = Field(default=None, description="Texts to classify.")
    images: list[str] | None = Field(
        default=None, description="Images as base64 strings or data URLs "
                                  "(data:image/png;base64,...).")


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``message``, never a traceback."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Overloaded(Exception):
    pass


# -- micro-batching -------------------------------------------------------------------------
@dataclass
class _Job:
    inputs: list[Any]
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Collects concurrent requests into engine calls run by one worker thread."""

    def __init__(self, predict: Callable[[list[Any]], np.ndarray], max_batch: int,
                 max_wait_ms: float, queue_size: int) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ConfigError("--max-batch and --queue-size must be at least 1 and "
                              "--max-wait-ms at least 0.")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-model")
        self.task: asyncio.Task[None] | None = None
        self.batch_sizes: Counter[int] = Counter()  # examples per engine call -> count
        self.requests = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, inputs: list[Any]) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Job(inputs, future))
        except asyncio.QueueFull:
            raise Overloaded from None
        self.requests += 1
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].inputs)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                if self.queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                else:
                    job = self.queue.get_nowait()
                jobs.append(job)
                size += len(job.inputs)
            inputs = [x for job in jobs for x in job.inputs]
            try:
                proba = await loop.run_in_executor(self.executor, self.predict, inputs)
            except Exception as e:  # a model failure answers these requests, then goes on
                log.exception("prediction failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            self.batch_sizes[len(inputs)] += 1
            start = 0
            for job in jobs:
                end = start + len(job.inputs)
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(proba[start:end])
                start = end

    def stats(self) -> dict[str, Any]:
        calls = sum(self.batch_sizes.values())
        examples = sum(k * v for k, v in self.batch_sizes.items())
        return {"requests": self.requests, "model_calls": calls, "examples": examples,
                "mean_batch": examples / calls if calls else 0.0,
                "max_batch_seen": max(self.batch_sizes, default=0),
                "queued": self.queue.qsize()}


# -- request parsing ------------------------------------------------------------------------
def _pydantic_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (and {e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return "; ".join(parts) + more


def parse_json_request(body: bytes, modality: str, limits: Limits) -> list[Any]:
    """Validate a JSON body into model inputs (texts, or still-encoded image bytes)."""
    if not body.strip():
        raise RequestError(422, 'Empty body. Send JSON like {"texts": ["some text"]}.')
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(422, f"The body is not valid UTF-8 (byte {e.start}): JSON must be "
                                "UTF-8 encoded.") from None
    try:
        request = PredictRequest.model_validate_json(body)
    except ValidationError as e:
        raise RequestError(422, f"Malformed request: {_pydantic_message(e)}. Send "
                                f'{_example(modality)}.') from None
    given = [k for k in ("texts", "images") if getattr(request, k) is not None]
    if len(given) != 1:
        raise RequestError(422, f"Send exactly one of 'texts' or 'images' "
                                f"(got {', '.join(given) or 'neither'}): {_example(modality)}.")
    key = given[0]
    wanted = "texts" if modality == "text" else "images"
    if key != wanted:
        raise RequestError(422, f"This model classifies {modality}s; send "
                                f"{_example(modality)}, not '{key}'.")
    items: list[str] = getattr(request, key)
    _check_count(len(items), limits)
    if key == "texts":
        return [_check_text(i, t, limits) for i, t in enumerate(items)]
    return [_decode_base64(i, s, limits) for i, s in enumerate(items)]


def _example(modality: str) -> str:
    return ('{"texts": ["first text", "second text"]}' if modality == "text"
            else '{"images": ["<base64>", "data:image/png;base64,<base64>"]}, or a multipart '
                 'form with image files')


def _check_count(n: int, limits: Limits) -> None:
    if n == 0:
        raise RequestError(422, "Empty batch: send at least one example.")
    if n > limits.max_examples:
        raise RequestError(413, f"{n} examples in one request; the limit is "
                                f"{limits.max_examples}. Split the batch into smaller requests.")


def _check_text(i: int, text: str, limits: Limits) -> str:
    if len(text) > limits.max_text_chars:
        raise RequestError(413, f"texts[{i}] has {len(text)} characters; the limit is "
                                f"{limits.max_text_chars}. Shorten it or raise "
                                "--max-text-chars.")
    if not text.strip():
        raise RequestError(422, f"texts[{i}] is empty. Send non-empty texts.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate escape such as "\ud800"
        raise RequestError(422, f"texts[{i}] holds an invalid Unicode character at position "
                                f"{e.start} (a lone surrogate). Send valid UTF-8 text.") from None
    return text


def _decode_base64(i: int, value: str, limits: Limits) -> bytes:
    where = f"images[{i}]"
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise RequestError(422, f"{where}: a data URL must look like "
                                    "data:image/png;base64,<base64>.")
    try:  # whitespace is dropped: `base64` wraps its output every 76 characters
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"{where} is not valid base64. Encode the image file's bytes "
                                "with base64 (or send a multipart form).") from None


def decode_image(where: str, data: bytes, limits: Limits) -> Any:
    """Bytes -> HxWx3 uint8 array; the size is checked from the header before any pixel is
    decoded, so a decompression bomb costs nothing."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(422, f"{where} is empty.")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL's own ceiling, above any sane limit
        raise RequestError(413, f"{where} is too large ({e}). Resize it first.") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(422, f"{where} is not an image PIL can read (send JPEG, PNG, BMP, "
                                "GIF, WebP or TIFF).") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise RequestError(413, f"{where} is {width}x{height} = {width * height:,} pixels; the "
                                f"limit is {limits.max_image_pixels:,}. Resize it first.")
    try:
        image.load()
        # an RGB uint8 array: the image input every engine and the feature cache accept
        return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RequestError(422, f"{where} is truncated or corrupt ({e}).") from None


async def parse_multipart(request: Request, limits: Limits) -> list[bytes]:
    from starlette.datastructures import UploadFile

    try:
        form = await request.form(max_files=limits.max_examples + 1,
                                  max_fields=limits.max_examples + 1)
    except HTTPException as e:  # starlette's multipart errors (malformed, too many parts)
        raise RequestError(422, f"Malformed multipart form: {e.detail}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        _check_count(len(files), limits)
        return [await f.read() for f in files]
    finally:
        await form.close()


# -- the app ---------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: 413 on a Content-Length over the limit, or as soon as a streamed
    (chunked) body grows past it, before the app has buffered it all."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"The request body is larger than the limit of {self.max_bytes:,} bytes. "
                   "Send fewer or smaller examples per request.")
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    return await _send_error(send, 413, message)
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return msg

        async def tracking_send(msg: dict[str, Any]) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, 413, message)


class _BodyTooLarge(Exception):
    pass


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


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

    app = FastAPI(title="transferkit model server", version=__version__, lifespan=lifespan,
                  description=f"Classifies {modality}s into: {', '.join(classes)}.")
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), options.api_key.encode()):
            raise RequestError(401, "Missing or wrong API key: send it in the X-API-Key header "
                                    "or as Authorization: Bearer <key>.")

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"detail": e.message}, status_code=e.status, headers=headers)

    @app.get("/health", summary="Liveness: 200 while the server is up (no API key needed).")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata", summary="Labels, backbone, metrics, version and serving counters.")
    async def get_metadata(request: Request) -> dict[str, Any]:
        check_key(request)
        return {**metadata, "serving": batcher.stats()}

    @app.post(
        "/predict", summary="Labels and probabilities for a batch of texts or images.",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            MULTIPART: {"schema": {"type": "object", "properties": {"images": {
                "type": "array", "items": {"type": "string", "format": "binary"}}}}},
        }}},
        responses={413: {"description": "Body, batch, text or image over a limit"},
                   415: {"description": "Unsupported media type"},
                   422: {"description": "Malformed request"},
                   503: {"description": "Queue full; retry after Retry-After seconds"}},
    )
    async def predict(request: Request) -> Response:
        check_key(request)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media in JSON_TYPES or media.endswith("+json"):
            inputs = parse_json_request(await request.body(), modality, limits)
            names = [f"images[{i}]" for i in range(len(inputs))]
        elif media == MULTIPART:
            if modality != "image":
                raise RequestError(422, f"This model classifies texts; send "
                                        f"{_example('text')} as application/json.")
            inputs = await parse_multipart(request, limits)
            names = [f"file {i + 1}" for i in range(len(inputs))]
        elif media.startswith("image/") and modality == "image":
            inputs = [await request.body()]
            names = ["the image body"]
        else:
            raise RequestError(415, f"Unsupported media type '{media or 'none'}'. Send "
                                    f"application/json ({_example(modality)})"
                                    + (", multipart/form-data with image files, or an image/* "
                                       "body" if modality == "image" else "") + ".")
        if modality == "image":  # decoding is CPU work: keep it off the event loop
            from starlette.concurrency import run_in_threadpool

            encoded = inputs
            inputs = await run_in_threadpool(
                lambda: [decode_image(n, b, limits) for n, b in zip(names, encoded, strict=True)])
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
    if run_dir is not None and (Path(run_dir) / "metrics.json").is_file():
        try:
            full = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
            metrics = {k: v for k, v in full.items() if isinstance(v, int | float)}
        except (OSError, json.JSONDecodeError):
            metrics = {}
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
        "limits": asdict(options.limits),
        "batching": {"max_batch": options.max_batch, "max_wait_ms": options.max_wait_ms,
                     "queue_size": options.queue_size},
    }


# -- running it ------------------------------------------------------------------------------
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve(
    run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, engine: str = "torch",
    int8: bool = False, precision: str = "auto", model_batch: int | None = None,
    max_batch: int = 32, max_wait_ms: float = 5.0, queue_size: int = 256,
    limits: Limits | None = None, api_key_env: str | None = None, access_log: bool = False,
    log_level: str = "info", threads: int | None = None,
) -> None:
    """Load the run once and serve it until SIGTERM / Ctrl-C, which finish in-flight
    requests before the process exits with status 0."""
    import uvicorn

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
    start = time.perf_counter()
    loaded = load_engine(run_dir, engine=engine, int8=int8, precision=precision,
                         batch_size=model_batch or DEFAULT_MODEL_BATCH[engine])
    if threads is not None and engine == "torch":
        import torch

        torch.set_num_threads(max(1, threads))
    options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                           limits=limits or Limits(), api_key=api_key)
    app = create_app(loaded, options, run_dir=run_dir,
                     engine_name=f"{engine}{' int8' if int8 else ''}")
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log,
                            log_level=log_level, timeout_graceful_shutdown=30,
                            limit_concurrency=max(1024, queue_size * 2))
    say = logging.getLogger("uvicorn.error")  # configured by uvicorn.Config: same format
    say.info("loaded %s (%s engine%s; labels: %s) in %.1f s; docs at http://%s:%d/docs",
             run_dir, engine, " int8" if int8 else "", ", ".join(loaded.classes),
             time.perf_counter() - start, host, port)
    if host not in LOOPBACK and api_key is None:
        say.warning("binding to %s without an API key: anyone who can reach this address can "
                    "use the model. Pass --api-key-env VAR to require a key.", host)
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, finish in-flight requests), then
    # re-raises the signal to the handler that was installed before it; a no-op handler there
    # turns that re-raise into a normal exit with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
