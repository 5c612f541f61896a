"""Small request-scoped helpers shared by the routers: app state, API key, model name."""

from __future__ import annotations

import hmac

from fastapi import Request

from server.errors import ApiError, model_not_found
from server.service import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.ds


async def require_api_key(request: Request) -> None:
    """When a key is configured, /v1 routes need 'Authorization: Bearer KEY' (compared in constant time)."""
    key = get_state(request).settings.api_key
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                       type="authentication_error", code="invalid_api_key")


def check_model(state: AppState, model: str) -> None:
    """A request's model must be the one served; a name never triggers a download or a file access."""
    if model != state.settings.model_id:
        raise model_not_found(model)


def request_id(request: Request) -> str:
    return request.state.request_id


def received(request: Request) -> float:
    return request.state.received
