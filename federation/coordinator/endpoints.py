"""What every endpoint of the coordinator shares: the coordinator serving a request, the
tokens it carries, JSON bodies and error answers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from federation.coordinator.service import Coordinator
from federation.core.clock import parse_instant
from federation.errors import InvalidInput

Handler = Callable[[Request], Awaitable[Response]]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def coordinator_of(request: Request) -> Coordinator:
    coordinator: Coordinator = request.app.state.coordinator
    return coordinator


def refused(token: str | None, needed: str) -> str:
    """Why a request was not authorized: no token at all, or one this coordinator refuses."""
    if token:
        return f"the token given was refused: {needed} is required"
    return f"no token given: {needed} is required"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def json_body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    return data


def instant(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if not text:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    return parse_instant(text, coordinator_of(request).clock)


def reader_denied(request: Request) -> Response | None:
    token = bearer_token(request) or request.query_params.get("token")
    if token and coordinator_of(request).tokens.check_reader(token):
        return None
    return error(401, refused(token, "the reader token"))


async def optional_body(request: Request) -> dict[str, Any]:
    if not (await request.body()).strip():
        return {}
    return await json_body(request)
