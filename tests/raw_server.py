"""A loopback HTTP server that answers with exactly the bytes a test gives it.

aiohttp's own server refuses to send what hostile servers send (header bytes
that are not UTF-8, a body dripped in tiny pieces with no line end), so this
one writes raw bytes: a test maps a path prefix to a list of byte chunks and a
delay between them. It runs on its own event loop in a thread of the test
process; the daemon under test is a separate process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Reply:
    """What to send for requests whose path starts with a prefix."""

    chunks: list[bytes]
    delay_s: float = 0.0  # between chunks


def http_response(status: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    """Status line and headers as raw bytes (any bytes at all), plus a body with its length."""
    lines = [b"HTTP/1.1 " + status.encode()] + [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def _read_request(reader: asyncio.StreamReader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ", 2)[1].decode("latin-1")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))
    return path


@contextmanager
def raw_server(replies: dict[str, Reply]) -> Iterator[str]:
    """Serve ``replies`` on 127.0.0.1; yield the base URL. Unknown paths get a 404."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            path = await _read_request(reader)
            reply = next((r for p, r in replies.items() if path.startswith(p)),
                         Reply([http_response("404 Not Found", [])]))
            for i, chunk in enumerate(reply.chunks):
                if i and reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        box["url"] = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        box["server"] = server
        started.set()
        await server.serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(_quiet(main())), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield box["url"]
    finally:
        loop.call_soon_threadsafe(box["server"].close)
        thread.join(5)


async def _quiet(coro) -> None:  # noqa: ANN001
    try:
        await coro
    except asyncio.CancelledError:
        pass
