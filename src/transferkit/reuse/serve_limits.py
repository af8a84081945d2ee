"""What one request to ``transferkit serve`` may ask for, and the parsing that enforces it.

Every limit is checked before the work it protects: the body while it streams (``BodyLimit``),
the number and length of examples before any of them is used, and image sizes from the image
headers, for each image and for the whole request, before a single pixel is decoded. A bad
request gets a 4xx whose message names the item and the limit, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is checked before the work it protects."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_examples: int = 64
    max_text_chars: int = 10_000
    max_image_pixels: int = 40_000_000  # 40 MP: any camera photo, not a decompression bomb
    # All images of one request together: a small body of well-compressed large images must
    # not cost gigabytes (16 black 6000x6000 PNGs are 747 KB and 576 M pixels). 64 M pixels
    # decode to ~190 MB of RGB.
    max_request_pixels: int = 64_000_000
    # A clip of audio, and all clips of one request together, in seconds of sound (read from
    # the file's header before any sample is decoded): 10 minutes of 16 kHz mono is 38 MB.
    max_audio_seconds: float = 30.0
    max_request_audio_seconds: float = 600.0


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``message``, never a traceback."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PredictRequest(BaseModel):
    """A JSON batch: ``texts`` for a text model, ``images`` (base64 or data URLs) for an image
    model, ``audio`` (base64 WAV/FLAC/OGG files or data URLs) for an audio model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[str] | None = Field(default=None, description="Texts to classify.")
    images: list[str] | None = Field(
        default=None, description="Images as base64 strings or data URLs "
                                  "(data:image/png;base64,...).")
    audio: list[str] | None = Field(
        default=None, description="Audio files (WAV, FLAC, OGG) as base64 strings or data URLs "
                                  "(data:audio/flac;base64,...).")


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
                                f'{example(modality)}.') from None
    given = [k for k in INPUT_FIELDS.values() if getattr(request, k) is not None]
    if len(given) != 1:
        raise RequestError(422, f"Send exactly one of 'texts', 'images' or 'audio' "
                                f"(got {', '.join(given) or 'none'}): {example(modality)}.")
    key = given[0]
    wanted = INPUT_FIELDS.get(modality, "texts")
    if key != wanted:
        raise RequestError(422, f"This model classifies {WHAT.get(modality, modality)}; send "
                                f"{example(modality)}, not '{key}'.")
    items: list[str] = getattr(request, key)
    _check_count(len(items), limits)
    if key == "texts":
        return [_check_text(i, t, limits) for i, t in enumerate(items)]
    return [_decode_base64(f"{key}[{i}]", s) for i, s in enumerate(items)]


# The JSON field that carries each modality's examples.
INPUT_FIELDS = {"text": "texts", "image": "images", "audio": "audio"}
# What a model of each modality classifies, for messages ("audios" is not a word).
WHAT = {"text": "texts", "image": "images", "audio": "audio clips"}


def example(modality: str) -> str:
    if modality == "text":
        return '{"texts": ["first text", "second text"]}'
    if modality == "audio":
        return ('{"audio": ["<base64 of a WAV/FLAC/OGG file>"]}, a multipart form with audio '
                'files, or an audio/* body')
    return ('{"images": ["<base64>", "data:image/png;base64,<base64>"]}, or a multipart '
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


def _decode_base64(where: str, value: str) -> bytes:
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise RequestError(422, f"{where}: a data URL must look like "
                                    "data:<media type>;base64,<base64>.")
    try:  # whitespace is dropped: `base64` wraps its output every 76 characters
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"{where} is not valid base64. Encode the file's bytes "
                                "with base64 (or send a multipart form).") from None


def decode_images(names: list[str], blobs: list[bytes], limits: Limits) -> list[Any]:
    """Encoded images -> HxWx3 uint8 arrays. Every image's size is read from its header, and
    checked alone and summed over the request, before any pixel is decoded: a decompression
    bomb, or many of them in one small request, costs nothing."""
    opened = [_open_image(name, data, limits) for name, data in zip(names, blobs, strict=True)]
    total = 0
    for name, image in zip(names, opened, strict=True):
        total += image.size[0] * image.size[1]
        if total > limits.max_request_pixels:
            raise RequestError(413, f"{name} brings this request to {total:,} decoded pixels "
                                    f"({len(names)} images sent); the limit per request is "
                                    f"{limits.max_request_pixels:,} pixels. Send fewer or "
                                    "smaller images per request.")
    return [_decode(name, image) for name, image in zip(names, opened, strict=True)]


def _open_image(where: str, data: bytes, limits: Limits) -> Any:
    """The image with only its header read (PIL decodes lazily)."""
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
    return image


def _decode(where: str, image: Any) -> Any:
    import numpy as np
    from PIL import Image

    try:
        image.load()
        # an RGB uint8 array: the image input every engine and the feature cache accept
        return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RequestError(422, f"{where} is truncated or corrupt ({e}).") from None


def decode_audio(names: list[str], blobs: list[bytes], limits: Limits) -> list[Any]:
    """Encoded audio files -> ``Clip``s. Each file's duration is read from its header, and
    checked alone and summed over the request, before any sample is decoded; a file that is
    not audio, truncated, empty or silent is a 422 naming it."""
    import soundfile as sf

    from ..data.audio import Clip, audio_problem

    total = 0.0
    for name, data in zip(names, blobs, strict=True):
        if not data:
            raise RequestError(422, f"{name} is empty.")
        try:
            seconds = sf.info(io.BytesIO(data)).duration
        except Exception:  # libsndfile: not audio, unknown format
            raise RequestError(422, f"{name} is not audio soundfile can read (send WAV, FLAC "
                                    "or OGG).") from None
        if seconds > limits.max_audio_seconds:
            raise RequestError(413, f"{name} is {seconds:.1f} s long; the limit is "
                                    f"{limits.max_audio_seconds:g} s. Cut it into shorter "
                                    "clips.")
        total += seconds
        if total > limits.max_request_audio_seconds:
            raise RequestError(413, f"{name} brings this request to {total:.1f} s of audio; "
                                    f"the limit per request is "
                                    f"{limits.max_request_audio_seconds:g} s. Send fewer "
                                    "clips per request.")
    clips = []
    for name, data in zip(names, blobs, strict=True):
        try:
            samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as e:  # a header that reads but frames that do not: truncated
            raise RequestError(422, f"{name} is truncated or corrupt ({e}).") from None
        clip = Clip(samples, int(rate), name)
        found = audio_problem(clip)
        if found:
            raise RequestError(422, f"{name}: {found[1].removeprefix(f'{name}: ')} "
                                    f"({found[0].replace('_', ' ')}).")
        clips.append(clip)
    return clips


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
                    return await send_error(send, 413, message)
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return msg

        tracked = TrackedSend(send)
        try:
            await self.app(scope, limited_receive, tracked)
        except _BodyTooLarge:
            if not tracked.started:
                await send_error(send, 413, message)


class _BodyTooLarge(Exception):
    pass


class TrackedSend:
    """An ASGI ``send`` that remembers whether the response has begun: middleware that
    answers an error itself may do so only before that."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.started = False

    async def __call__(self, msg: dict[str, Any]) -> None:
        self.started = self.started or msg["type"] == "http.response.start"
        await self.send(msg)


async def send_error(send: Any, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON error straight through ASGI, closing the connection (used where the app's own
    exception handlers are not on the path)."""
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
