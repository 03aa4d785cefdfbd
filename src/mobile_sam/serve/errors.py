"""Client errors of the REST API: every one is JSON ``{"detail": message, "field": name}``.

:class:`ApiError` is what routes raise; :data:`EXCEPTION_HANDLERS` turns it, FastAPI's request
validation errors and anything unexpected into that shape (the last as a bare 500 that never
echoes the exception, which may hold server paths).
"""
from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

__all__ = ["EXCEPTION_HANDLERS", "ApiError", "error_response", "error_responses"]

_ERROR_SCHEMA = {"application/json": {"schema": {
    "type": "object", "required": ["detail"],
    "properties": {"detail": {"type": "string", "description": "What was wrong, naming the field"},
                   "field": {"type": ["string", "null"], "description": "The offending field"}}}}}


class ApiError(HTTPException):
    """An error the client caused: becomes ``{"detail": message, "field": field}``.

    An HTTPException, so that raised while FastAPI reads a body it is not turned into a 400.
    """

    def __init__(self, status: int, field: str | None, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.status = status
        self.field = field
        self.message = message


def error_response(status: int, field: str | None, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, "field": field}, status_code=status,
                        headers=headers)


def error_responses(**codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses, e.g. error_responses(e404="Unknown image id")."""
    return {int(code[1:]): {"description": text, "content": _ERROR_SCHEMA}
            for code, text in codes.items()}


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.field, exc.message,
                          dict(exc.headers) if exc.headers else None)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's body and parameter validation: the first problem, named by its location."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return error_response(400, "body", f"body: invalid JSON: {reason}".rstrip(": "))
    field = loc[0] if loc else "body"
    where = ".".join(loc) if loc else "body"
    message = f"{where}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(422, field, message)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Never echo the exception: it may hold server paths.
    return error_response(500, None, "internal server error")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    RequestValidationError: _validation_error,
    Exception: _internal_error,
}
"""Handlers for ``FastAPI(exception_handlers=...)``."""
