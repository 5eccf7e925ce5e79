"""A local image server on 127.0.0.1 for URL tests (the only place tests fetch from)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(routes: dict[str, tuple[int, dict[str, str], bytes]]):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            status, headers, body = routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"no"))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


@contextmanager
def serve_routes(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> Iterator[int]:
    """Serve ``{path: (status, headers, body)}`` on 127.0.0.1; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(routes))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
