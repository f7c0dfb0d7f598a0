"""A real HTTP server on loopback that plays a recipient's webhook and fails in
scripted ways; it records exactly what it accepted."""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

import uvicorn

from tests.natsutil import free_port


@dataclass
class Reply:
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class WebhookServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.script: deque[Reply] = deque()  # replies to give, in order; then `default`
        self.default = Reply(200)
        self.seen: list[dict] = []  # every request: headers and body
        self.accepted: list[dict] = []  # the ones answered 2xx

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def app(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = {"headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]}, "body": body}
        self.seen.append(request)
        reply = self.script.popleft() if self.script else self.default
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if 200 <= reply.status < 300:
            self.accepted.append(request)
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": [(k.encode(), v.encode()) for k, v in reply.headers.items()]})
        await send({"type": "http.response.body", "body": b""})

    @contextlib.asynccontextmanager
    async def running(self):
        server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                               interface="asgi3",
                                               lifespan="off"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            yield self
        finally:
            server.should_exit = True
            await task
