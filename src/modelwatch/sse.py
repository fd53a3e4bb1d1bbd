"""Server-sent events framing, sans-I/O: bytes in, events out.

Follows the WHATWG event-stream rules that matter to LLM APIs: lines end in
LF, CRLF or CR; a blank line ends an event; ``:`` starts a comment; several
``data:`` lines join with ``\\n``; one space after the colon is dropped. An
event still open at end of stream is discarded, as the spec says.

One deviation on purpose: a line with the non-standard field name ``error``
(llama.cpp's server once sent stream errors that way, PROTOCOLS.md section 7)
is kept as the data of an event named ``error`` instead of being dropped, so a
failing stream is reported as the error it is rather than as a missing
terminator.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class SSEEvent:
    """One dispatched event; ``event`` is empty when the stream named none."""

    data: str
    event: str = ""
    id: str | None = None


class SSEDecoder:
    """Incremental decoder: :meth:`feed` bytes as they arrive, get whole events back."""

    __slots__ = ("_buf", "_data", "_event", "_id", "_has_data", "comments")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._has_data = False
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume bytes and return the events they complete."""
        buf = self._buf + chunk
        # A trailing CR may be the first half of CRLF: keep it until the next chunk.
        cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        body, self._buf = buf[:cut], buf[cut:]
        lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buf = lines.pop() + self._buf  # the unfinished last line
        events: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw)
            if event is not None:
                events.append(event)
        return events

    def pending_bytes(self) -> int:
        """Bytes buffered in an unfinished line (for size caps)."""
        return len(self._buf)

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            self.comments += 1
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "error":
            self._data.append(value)
            self._event = "error"
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._has_data:
            self._event = ""
            return None
        event = SSEEvent("\n".join(self._data), self._event, self._id)
        self._data = []
        self._event = ""
        self._has_data = False
        return event
