"""The body cap stops reading as the bytes arrive (ASGI level, no server needed)."""

import asyncio

from fastapi import FastAPI, Request

from deployments.parsing import BodySizeLimit
from deployments.responses import install_error_handlers

CHUNK = 64 * 1024


def run(limit: int, chunks: int, content_type: str) -> tuple[int, int]:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)
    app.state.max_body_bytes = limit

    @app.post("/")
    async def read_all(request: Request) -> dict:
        if content_type.startswith("multipart"):
            await request.form()
        else:
            await request.body()
        return {}

    pulled, statuses = 0, []

    preamble = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'

    async def receive():
        nonlocal pulled
        pulled += 1
        body = b"\0" * CHUNK
        if pulled == 1 and content_type.startswith("multipart"):
            body = preamble + body[len(preamble):]
        return {"type": "http.request", "body": body, "more_body": pulled < chunks}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [
        (b"content-type", content_type.encode())], "query_string": b"", "http_version": "1.1",
        "scheme": "http", "server": ("t", 80), "client": ("t", 1), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    return statuses[0], pulled


def test_chunked_json_body_stops_at_the_limit():
    status, pulled = run(limit=10 * CHUNK, chunks=1000, content_type="application/json")
    assert status == 413 and pulled == 11


def test_chunked_multipart_body_stops_at_the_limit():
    status, pulled = run(limit=10 * CHUNK, chunks=1000, content_type="multipart/form-data; boundary=XyZ")
    assert status == 413 and pulled == 11


def test_bodies_under_the_limit_pass():
    status, pulled = run(limit=10 * CHUNK, chunks=5, content_type="application/json")
    assert status == 200 and pulled == 5

