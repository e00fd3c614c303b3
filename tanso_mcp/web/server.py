"""The HTTP protocol ``tanso-mcp serve`` runs: uvicorn's httptools protocol with a bound
on request headers.

httptools buffers a header until it is complete and uvicorn sets no limit of its own,
so one 16 MiB header, or thousands of small ones, would be held in memory before any
application code could refuse them. Here the bytes of a request's head (request line
and headers) are counted as they arrive: past ``MAX_HEADER_BYTES`` in all, or past
``MAX_HEADERS`` headers, the server answers 431 and closes the connection (the rest of
that request cannot be told apart from the next one). ``RequestRulesMiddleware`` applies
the same bounds to requests that reach the application through any other server.
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .jsonio import dumps
from .middleware import MAX_HEADER_BYTES, MAX_HEADERS, headers_too_large


class _HeadTooLarge(Exception):
    pass


def _431() -> bytes:
    err = headers_too_large()
    body = dumps({"success": False, "error": err.to_dict()})
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


class HeaderLimitedHttpTools(HttpToolsProtocol):
    _in_head = False
    _raw = 0  # bytes received since the current request's head began (upper bound)
    _head_bytes = 0  # request target and header bytes parsed so far
    _head_count = 0
    _refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._raw = self._head_bytes = self._head_count = 0

    def on_url(self, url: bytes) -> None:
        self._charge(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        self._charge(len(name) + len(value))
        super().on_header(name, value)

    def _charge(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEADER_BYTES or self._head_count > MAX_HEADERS:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        was_in_head = self._in_head
        if was_in_head:
            self._raw += len(data)
            if self._raw > MAX_HEADER_BYTES:
                return self._refuse()
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                return self._refuse()
            return self._bad_request()
        except httptools.HttpParserError:
            return self._bad_request()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and not was_in_head:
            # a head that began in this chunk and is still incomplete holds at most all of it
            self._raw = len(data)

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _refuse(self) -> None:
        self._refused = True
        self.transport.write(_431())
        self.transport.close()
