"""Every error leaves through here, in OpenAI's envelope {"error": {message, type, param, code}}.

Routes raise `ApiError`s; handlers turn FastAPI's validation errors (422 by default) into 400s, HTTP
errors into the envelope, and anything unexpected into a 500 that names the request id and leaks nothing.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("deltaserve")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error envelope."""

    error: ErrorBody


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers, self.extra = headers or {}, extra or {}

    def body(self) -> dict:
        return {"error": {**ErrorBody(message=self.message, type=self.type, param=self.param,
                                      code=self.code).model_dump(), **self.extra}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist on this server (see GET /v1/models).",
                    type="not_found_error", code="model_not_found", param="model")


def overloaded(retry_after: int) -> ApiError:
    return ApiError(503, "The server is busy: the request queue is full. Retry later.", type="server_is_overloaded",
                    code="server_is_overloaded", headers={"Retry-After": str(retry_after)})


def not_ready(message: str) -> ApiError:
    return ApiError(503, f"The server is not ready: {message}.", type="unavailable_error", code="model_loading",
                    headers={"Retry-After": "1"})


ERROR_RESPONSES = {  # for the OpenAPI schema of every /v1 route
    400: {"model": ErrorResponse, "description": "invalid request"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "body too large"},
    503: {"model": ErrorResponse, "description": "queue full or model loading (Retry-After set)"},
}


def error_json(err: ApiError, request: Request | None = None) -> JSONResponse:
    """The envelope response; counts the error in the app's metrics when a request is given."""
    state = getattr(request.app.state, "ds", None) if request is not None else None
    if state is not None:
        state.metrics.error(err.type)
        route = request.scope.get("route")
        state.metrics.observe_request(getattr(route, "path", "unmatched"), err.status, None)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _param(loc: tuple) -> str | None:
    """The field path of a pydantic error location, without pydantic's union-member tags (`str`, `list[int]`)."""
    parts = []
    for p in loc:
        if isinstance(p, int) or (str(p).isidentifier() and str(p) not in _TYPE_TAGS):
            parts.append(str(p))
        else:
            break
    parts = parts[1:] if parts and parts[0] in ("body", "query", "path") else parts
    return ".".join(parts) or None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "TextPart", "OtherPart"}


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors() or [{"msg": "invalid request", "loc": ()}]
    if errs[0].get("type") == "json_invalid":
        err = invalid(f"The request body is not valid JSON: {errs[0].get('msg')}", code="invalid_json")
        return error_json(err, request)
    param = _param(tuple(errs[0].get("loc", ())))
    # a union field fails once per member: report them together
    msgs = list(dict.fromkeys(e.get("msg", "invalid value") for e in errs if _param(tuple(e.get("loc", ()))) == param))
    where = f"Invalid value for field '{param}': " if param else "Invalid request: "
    return error_json(invalid(where + "; or ".join(msgs[:4]), param=param), request)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kinds = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}
    type_, code = kinds.get(exc.status_code, ("invalid_request_error", None))
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = f"No route {request.method} {request.url.path}."
    elif exc.status_code == 400 and "parsing the body" in message:  # bytes that are not UTF-8, or nested too deep
        type_, code = "invalid_request_error", "invalid_json"
        message = "The request body could not be read as JSON: it is not UTF-8, or it is nested too deeply."
    err = ApiError(exc.status_code, message, type=type_, code=code, headers=dict(exc.headers or {}))
    return error_json(err, request)


async def _api(request: Request, exc: ApiError) -> JSONResponse:
    return error_json(exc, request)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "unknown")
    log.exception("internal error in request %s", request_id)
    err = ApiError(500, f"Internal server error (request id {request_id}).", type="server_error", code="internal_error")
    return error_json(err, request)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
