"""``crossfed serve``: a platform's recommendations over HTTP (FastAPI + uvicorn).

One process serves one or more platforms of a finished run, each from its own
:class:`~clients.recommender.Recommender` (its private parameters stay on the machine that
serves it). The catalogue's item vectors are computed before the server accepts requests, so
every request costs one user vector and a few head passes.

    GET  /health                                        {"status": "ok", "platforms": [...], ...}
    GET  /platforms/{platform}/recommend?user_id=U&k=10  top-K, without what U already has
    POST /platforms/{platform}/score                     {"user_id": U, "item_ids": [...]} -> scores

A bad request is a 4xx with ``{"detail": "<what is wrong>"}``: 404 for an unknown platform or
user, 422 for an unknown item, a ``k`` out of range or a malformed body.

FastAPI and uvicorn come with Flower (``flwr`` serves its own APIs with them), and are named in
``pyproject.toml`` because this module imports them directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from clients.recommender import Recommender, RecommendError

log = logging.getLogger("crossfed.serve")

MAX_K = 1000
MAX_ITEMS = 10_000  # item ids per score request


class ScoreRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=512)
    item_ids: list[str] = Field(min_length=1, max_length=MAX_ITEMS)
    cold_start: bool = False


def create_app(recommenders: Mapping[str, Recommender], info: Mapping[str, Any] | None = None) -> FastAPI:
    """The HTTP app over already loaded recommenders (one per platform); item vectors are warmed here."""
    for rec in recommenders.values():
        rec.item_vectors()
    app = FastAPI(title="crossfed", summary="recommendations of a federated run, per platform")

    def _platform(name: str) -> Recommender:
        if name not in recommenders:
            raise HTTPException(404, f"unknown platform {name!r}; served: {sorted(recommenders)}")
        return recommenders[name]

    def _user_known(rec: Recommender, user_id: str, cold_start: bool) -> None:
        if not cold_start and user_id not in rec.histories:
            raise HTTPException(404, f"unknown user {user_id!r} (pass cold_start=true to score a new user)")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "platforms": {name: {"items": len(rec.part.table), "users": len(rec.histories)}
                                              for name, rec in recommenders.items()}, **(info or {})}  # fmt: skip

    @app.get("/platforms/{platform}/recommend")
    def recommend(
        platform: str,
        user_id: str = Query(min_length=1, max_length=512),
        k: int = Query(10, ge=1, le=MAX_K),
        include_seen: bool = False,
        cold_start: bool = False,
    ) -> dict[str, Any]:
        rec = _platform(platform)
        _user_known(rec, user_id, cold_start)
        try:
            top = rec.top_k(user_id, k, exclude_seen=not include_seen, cold_start=cold_start)
        except RecommendError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"platform": platform, "user_id": user_id, "items": [s.to_dict() for s in top]}

    @app.post("/platforms/{platform}/score")
    def score(platform: str, body: ScoreRequest) -> dict[str, Any]:
        rec = _platform(platform)
        _user_known(rec, body.user_id, body.cold_start)
        try:
            probs = rec.score(body.user_id, body.item_ids, cold_start=body.cold_start)
        except RecommendError as exc:
            raise HTTPException(422, str(exc)) from exc
        scores = [{"item_id": i, "score": float(p)} for i, p in zip(body.item_ids, probs, strict=True)]
        return {"platform": platform, "user_id": body.user_id, "scores": scores}

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run until interrupted (Ctrl-C stops uvicorn cleanly)."""
    import uvicorn

    log.info("serving on http://%s:%d (GET /health)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
