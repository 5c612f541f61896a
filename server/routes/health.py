"""Liveness (/health) and readiness (/ready: model loaded and warm)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from server.deps import get_state
from server.errors import ERROR_RESPONSES

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    model: str
    running: int
    waiting: int


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    """Always 200 while the process serves; `status` says loading, ready or failed."""
    state = get_state(request)
    w = state.worker
    status = "ready" if w.ready.is_set() else ("failed" if w.load_error else "loading")
    return Health(status=status, model=state.settings.model_id, running=w.running, waiting=w.waiting)


@router.get("/ready", response_model=Health, responses={503: ERROR_RESPONSES[503]})
async def ready(request: Request) -> Health:
    """200 once the model is loaded and every kernel warmed up; 503 before."""
    state = get_state(request)
    state.require_ready()
    return await health(request)
