"""``transferkit serve`` for a run of ``recommend fit``: ``POST /recommend``.

The same connection layer and limits as the classifier server (``serve_http``,
``serve_limits``: read deadlines, connection cap, body limit, a shutdown that answers every
accepted request, an optional API key), around a much lighter model: a recommendation is
one row of a matrix product, so requests are answered inline with no micro-batching."""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..errors import TransferkitError
from .serve_http import ConnectionLimits, ShutdownGuard, build_server, run_server
from .serve_limits import BodyLimit, Limits, RequestError

log = logging.getLogger("transferkit.serve")
MAX_K = 1000


class RecommendRequest(BaseModel):
    """``{"user": "196"}`` or ``{"users": ["196", "1"]}``, with optional ``k`` and ``model``."""

    model_config = ConfigDict(extra="forbid")
    user: str | None = None
    users: list[str] | None = None
    k: int = Field(10, ge=1, le=MAX_K)
    model: str | None = None


def create_recommend_app(recommender: Any, *, limits: Limits | None = None,
                         api_key: str | None = None) -> FastAPI:
    limits = limits or Limits()
    expected = api_key.encode() if api_key else None
    app = FastAPI(title="transferkit recommender", version=__version__, openapi_url=None,
                  docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(ShutdownGuard)

    def check_key(request: Request) -> None:
        if expected is None:
            return
        given = [v.strip() for v in request.headers.getlist("x-api-key")]
        given += [a.strip()[7:].strip() for a in request.headers.getlist("authorization")
                  if a.strip().lower().startswith("bearer ")]
        ok = False
        for key in given:  # every one compared, in constant time
            ok |= bool(key) and hmac.compare_digest(key.encode("latin-1"), expected)
        if not ok:
            raise RequestError(401, "Missing or wrong API key: send it in the X-API-Key header "
                                    "or as Authorization: Bearer <key>.")

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"transferkit_version": __version__, "kind": "recommender",
                "models": list(recommender.models), "default_model": recommender.default_model,
                "users": len(recommender.user_ids), "items": len(recommender.item_ids),
                "backbone": {k: recommender.config["backbone"].get(k)
                             for k in ("source", "feature_dim", "fingerprint")}}

    @app.post("/recommend")
    async def recommend(request: Request) -> Response:
        check_key(request)
        try:
            req = RecommendRequest.model_validate_json(await request.body())
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise RequestError(422, f"Bad request at '{where}': {first['msg']}. Send JSON like "
                                    '{"user": "196", "k": 10} or {"users": ["196", "1"]}.'
                               ) from None
        if (req.user is None) == (req.users is None):
            raise RequestError(422, 'Send exactly one of "user" (an id) or "users" (a list '
                                    'of ids), e.g. {"user": "196", "k": 10}.')
        users = [req.user] if req.user is not None else list(req.users or [])
        if not users or len(users) > limits.max_examples:
            raise RequestError(413 if users else 422, f"Send 1 to {limits.max_examples} users "
                                                      f"per request (got {len(users)}).")
        try:
            answers = recommender.recommend_many(users, k=req.k, model=req.model)
        except TransferkitError as e:  # an unknown user or model: the message says which
            raise RequestError(404 if "Unknown user" in str(e) else 422, str(e)) from None
        body = {"model": req.model or recommender.default_model,
                "recommendations": [{"user": u, "items": answers[u]} for u in users]}
        return Response(json.dumps(body).encode(), media_type="application/json")

    return app


def serve_recommender(run_dir: str | Path, *, host: str, port: int, api_key: str | None,
                      limits: Limits | None, connections: ConnectionLimits | None,
                      access_log: bool = False, log_level: str = "info") -> None:
    """Load the run once and serve it until SIGTERM / Ctrl-C."""
    from ..recommend.recommender import Recommender

    recommender = Recommender.load(run_dir)
    app = create_recommend_app(recommender, limits=limits, api_key=api_key)
    server = build_server(app, host=host, port=port, limits=connections or ConnectionLimits(),
                          log_level=log_level, access_log=access_log)
    log.info("loaded recommender %s (%s; models: %s): POST /recommend on http://%s:%d",
             run_dir, recommender.default_model, ", ".join(recommender.models), host, port)
    run_server(server)
