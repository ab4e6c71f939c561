"""How uvicorn runs the service: its options from the settings, and an HTTP protocol with a header deadline.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``), but only once a first response is
complete, and nothing bounds the time to receive a request's headers: with h11 or httptools a client that
connects and sends nothing, or sends half a request line, holds its connection and socket forever
(``h11_max_incomplete_event_size`` bounds the size of the head, not its time). :func:`header_deadline_protocol`
subclasses uvicorn's protocol so a connection waiting for a request head (a new one, or a keep-alive one
that has started its next request) is closed ``seconds`` after it began waiting: with ``408 Request Timeout``
when part of a head had come, silently when nothing had. The body's deadline is the service's own (the
``EdgeMiddleware`` in :mod:`router_rl.serve.app`), as is the deadline on the whole request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from router_rl.serve.settings import ServeSettings

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)
_BODY_408 = (
    b'{"error": {"message": "the request headers did not arrive within %s s", '
    b'"type": "invalid_request_error", "param": null, "code": "request_timeout"}}'
)


def _base_protocol(http: str) -> type[asyncio.Protocol]:
    if http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's auto choice is h11 too
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    return HttpToolsProtocol


def header_deadline_protocol(seconds: float, http: str = "auto") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) with a deadline of ``seconds`` on every request head.

    The clock starts when a connection opens, and when bytes of a next request arrive on a keep-alive
    connection (its idle time before that is uvicorn's ``timeout_keep_alive``); it stops when the head is
    parsed (uvicorn then makes the request's cycle). Both protocols keep ``cycle`` as the latest request.
    """
    base: Any = _base_protocol(http)

    class HeaderDeadlineProtocol(base):  # type: ignore[misc, valid-type]
        header_timeout_s = float(seconds)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_bytes = False
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a head was parsed: its request runs under the service's deadlines
                self._cancel_head_timer()
            if self._waiting_for_head():
                self._head_bytes = True
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm_head_timer(self) -> None:
            if self._head_timer is None and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._head_bytes = False

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or not self._waiting_for_head():
                return
            if self._head_bytes:
                body = _BODY_408 % f"{self.header_timeout_s:g}".encode()
                self.transport.write(_TIMEOUT_408 % (len(body), body))
            self.transport.close()

    HeaderDeadlineProtocol.__name__ = HeaderDeadlineProtocol.__qualname__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadlineProtocol


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    """The uvicorn.Config options that bound slow clients: the head deadline and the keep-alive timeout."""
    return {
        "http": header_deadline_protocol(settings.client_header_timeout_s),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
    }
