"""GET /v1/models and /v1/models/{id}: the one model this server serves."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from server.deps import check_model, get_state, require_api_key
from server.errors import ERROR_RESPONSES
from server.schemas import ModelCard, ModelList

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
STARTED = int(time.time())


def _card(request: Request) -> ModelCard:
    state = get_state(request)
    return ModelCard(id=state.settings.model_id, created=STARTED, max_model_len=state.context_length)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(request)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    check_model(get_state(request), model_id)
    return _card(request)
