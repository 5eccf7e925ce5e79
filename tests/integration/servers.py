"""Local servers on loopback for URL tests: a hostile image server and a canary.

They run on their own event loop in a background thread; every endless behaviour is bounded
in time so a broken test cannot leave traffic running.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from images import jpeg, png_bomb

PHOTO = jpeg(640, 480, seed=1)
HTML = b"<!doctype html><html><body>" + b"<p>not an image</p>" * 50 + b"</body></html>"
BOUND_S = 20  # no response of these servers lasts longer


def build_image_app(canary_port: int) -> web.Application:
    async def photo(request: web.Request) -> web.Response:
        return web.Response(body=PHOTO, content_type="image/jpeg")

    async def photo_as_html(request: web.Request) -> web.Response:
        return web.Response(body=PHOTO, content_type="text/html")

    async def html_as_jpeg(request: web.Request) -> web.Response:
        return web.Response(body=HTML, content_type="image/jpeg")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="image/jpeg")

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(body=png_bomb(30000, 30000), content_type="image/png")

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        for byte in PHOTO[:BOUND_S]:  # one byte a second
            await response.write(bytes([byte]))
            await asyncio.sleep(1)
        return response

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        chunk = PHOTO[:16] + b"\0" * (64 * 1024 - 16)  # starts like a JPEG, never ends
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND_S
        try:
            while loop.time() < deadline:
                await response.write(chunk)
        except (ConnectionResetError, RuntimeError):
            pass  # the client hung up, as it should
        return response

    async def hop(request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        target = "/photo.jpg" if left <= 0 else f"/hop/{left - 1}"
        raise web.HTTPFound(target)

    async def loop_forever(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def to_canary_v6(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://[::1]:{canary_port}/x.jpg")

    async def to_canary_name(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{canary_port}/x.jpg")

    async def to_file(request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = 10**12
        await response.prepare(request)
        await response.write(PHOTO[:1024])
        return response

    app = web.Application()
    app.add_routes([
        web.get("/photo.jpg", photo), web.get("/photo-as-html", photo_as_html),
        web.get("/html-as-jpeg", html_as_jpeg), web.get("/empty", empty), web.get("/bomb.png", bomb),
        web.get("/stall", stall), web.get("/endless", endless), web.get("/hop/{n}", hop),
        web.get("/loop", loop_forever), web.get("/to-canary-v6", to_canary_v6),
        web.get("/to-canary-name", to_canary_name), web.get("/to-file", to_file),
        web.get("/big", big),
    ])
    return app


class Canary:
    """Listens on 127.0.0.1 and ::1 (same port) and counts every connection it is offered."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def start(self) -> list[asyncio.AbstractServer]:
        async def on_connect(reader, writer) -> None:
            self.connections += 1
            writer.close()

        first = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = first.sockets[0].getsockname()[1]
        servers = [first]
        try:
            servers.append(await asyncio.start_server(on_connect, "::1", self.port))
        except OSError:
            pass  # no IPv6 loopback here: the v4 listener still counts
        return servers


@contextmanager
def hostile_servers() -> Iterator[tuple[int, Canary]]:
    """Start the canary and the image server on loopback; yields (image_port, canary)."""
    loop = asyncio.new_event_loop()
    canary = Canary()
    ready = threading.Event()
    state: dict = {}

    async def main() -> None:
        state["canary"] = await canary.start()
        runner = web.AppRunner(build_image_app(canary.port), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["port"] = site._server.sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop).result(timeout=10)
    ready.wait(10)
    try:
        yield state["port"], canary
    finally:
        async def stop() -> None:
            await state["runner"].cleanup()
            for server in state["canary"]:
                server.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


# Ports Ray gives out on its own by default: workers 10002-19999, ingress replicas (HAProxy mode)
# 30000-31000, and the kernel's ephemeral range (32768+ on Linux) for everything that binds 0.
TEST_PORTS = range(20000, 30000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port that is free now and that no Ray process will be handed by chance.

    A port the kernel picks (bind to 0) is in its ephemeral range, so between this check and
    the moment a Ray process binds it, one of Ray's own processes can be given it: seen once
    as HAProxy failing to start with "Address already in use". ``TEST_PORTS`` lies between
    the ranges Ray hands out, and below the ephemeral range where the kernel says so.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            ephemeral_start = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = 32768  # Linux's default
    ports = range(TEST_PORTS.start, min(TEST_PORTS.stop, ephemeral_start))
    if len(ports) < 100:  # an unusual ephemeral range: take the kernel's pick
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(200):
        port = random.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found in {ports}")


@contextmanager
def serve_routes(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> Iterator[int]:
    """Serve fixed ``{path: (status, headers, body)}`` on 127.0.0.1; yields the port."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
