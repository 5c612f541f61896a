"""Per-request timing records, looked up after the fact by response id or X-Request-Id."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from server.deps import get_state, require_api_key
from server.errors import ERROR_RESPONSES, ApiError
from server.schemas import TimingList, TimingRecord

router = APIRouter(tags=["timings"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)


@router.get("/v1/timings", response_model=TimingList)
async def list_timings(request: Request, limit: int = Query(20, ge=1, le=10_000)) -> TimingList:
    """The most recent records, newest first."""
    return TimingList(data=get_state(request).store.recent(limit))


@router.get("/v1/timings/{key}", response_model=TimingRecord)
async def get_timing(key: str, request: Request) -> TimingRecord:
    """One record by the response `id` (cmpl-..., chatcmpl-...) or by the request's X-Request-Id."""
    store = get_state(request).store
    record = store.get(key)
    if record is not None:
        return record
    if store.was_evicted(key):
        raise ApiError(404, f"The timing record '{key}' was evicted: the store keeps the last {store.size} "
                            "requests (--timing-store-size).", type="not_found_error", code="timing_evicted")
    raise ApiError(404, f"No timing record '{key}': unknown id, or the request has not finished yet.",
                   type="not_found_error", code="timing_not_found")
