"""Strict parsing of JSON request bodies: UTF-8, finite numbers, valid Unicode strings.

Python's :func:`json.loads` accepts what JSON (RFC 8259) does not: the literals ``NaN``, ``Infinity`` and
``-Infinity``, numbers beyond the float range (``1e400`` becomes ``inf``), and ``\\ud800`` escapes that leave a
lone UTF-16 surrogate in a string (and so does the ``surrogatepass`` decoding it applies to bytes). Such values
break later: a tokenizer raises TypeError on a lone surrogate, ``json.dumps`` writes ``NaN`` into the body
forwarded upstream. :func:`loads` refuses them with an :class:`~router_rl.serve.errors.APIError` (400) that names
the offending field's path (``messages.0.content``). The common case costs one C-level parse: the tree is walked
only to name the path of a value already known to be bad, or when the raw text holds a surrogate escape.

:class:`StrictJSONRoute` makes FastAPI parse every JSON body this way.
"""

from __future__ import annotations

import email.message
import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from router_rl.serve.errors import APIError

# a \uD800-\uDFFF escape (half of a pair, or a lone one: only the parsed string tells)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _NonFinite(str):
    """The source text of a number that is not finite (``NaN``, ``Infinity``, ``1e400``), kept to name it."""


def _path(parts: list[str | int]) -> str:
    """``messages.0.content``; a key that is not valid Unicode itself is written with backslash escapes."""
    return ".".join(str(p).encode("utf-8", "backslashreplace").decode("utf-8") for p in parts) or "body"


def _find(tree: Any, bad: Callable[[Any], bool]) -> tuple[str, Any] | None:
    """The dotted path and value of the first node (keys included) for which ``bad`` holds, depth first.
    Iterative: a body nested as deep as the parser allows must not overflow the stack here."""
    stack: list[tuple[list[str | int], Any]] = [([], tree)]
    while stack:
        parts, node = stack.pop()
        if bad(node):
            return _path(parts), node
        if isinstance(node, dict):
            items = list(node.items())
            for key, _ in items:
                if bad(key):
                    return _path([*parts, key]), key
            stack.extend(([*parts, k], v) for k, v in reversed(items))
        elif isinstance(node, list):
            stack.extend(([*parts, i], v) for i, v in reversed(list(enumerate(node))))
    return None


def _not_unicode(value: Any) -> bool:
    if not isinstance(value, str) or value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def loads(body: bytes) -> Any:
    """The JSON value of ``body``; :class:`APIError` (400) for anything but UTF-8 JSON with finite numbers
    and valid Unicode strings."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(
            400,
            f"the body is not UTF-8 (byte {body[err.start]:#04x} at position {err.start}); send UTF-8 JSON",
            code="invalid_json",
        ) from None
    flagged = False

    def constant(name: str) -> _NonFinite:  # NaN, Infinity, -Infinity
        nonlocal flagged
        flagged = True
        return _NonFinite(name)

    def number(literal: str) -> float | _NonFinite:
        nonlocal flagged
        value = float(literal)
        if math.isfinite(value):
            return value
        flagged = True
        return _NonFinite(literal)

    try:
        tree = json.loads(text, parse_constant=constant, parse_float=number)
    except json.JSONDecodeError as err:
        raise APIError(
            400, f"the body is not valid JSON ({err.msg} at position {err.pos})", code="invalid_json"
        ) from None
    except (ValueError, RecursionError) as err:  # an integer of more than 4,300 digits, nesting too deep
        raise APIError(400, f"the body is not valid JSON ({err})", code="invalid_json") from None
    if flagged:
        found = _find(tree, lambda v: isinstance(v, _NonFinite))
        if found is not None:
            path, literal = found
            raise APIError(
                400,
                f"{path}: {literal} is not a finite number (JSON has no NaN or Infinity, and a number must "
                "fit a 64-bit float)",
                param=path,
                code="invalid_number",
            )
    if _SURROGATE_ESCAPE.search(text):
        found = _find(tree, _not_unicode)
        if found is not None:
            path, value = found
            at = next(i for i, ch in enumerate(value) if 0xD800 <= ord(ch) <= 0xDFFF)
            raise APIError(
                400,
                f"{path}: the string is not valid Unicode (a lone UTF-16 surrogate \\u{ord(value[at]):04x} at "
                f"character {at}); send text whose \\u escapes pair up",
                param=path,
                code="invalid_unicode",
            )
    return tree


def _is_json(request: Request) -> bool:
    """Whether FastAPI parses this request's body as JSON: no Content-Type, or application/json or +json."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class StrictJSONRequest(Request):
    """A request whose :meth:`json` is :func:`loads` (cached, as Starlette's is)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route that parses JSON bodies with :func:`loads` before FastAPI does, so a bad body gets the
    :class:`APIError` naming the field rather than FastAPI's generic 400 (which it gives to any parse error)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            request = StrictJSONRequest(request.scope, request.receive)
            if request.method in ("POST", "PUT", "PATCH") and _is_json(request) and await request.body():
                await request.json()
            return await handler(request)

        return strict
