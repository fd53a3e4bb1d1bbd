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
    """Incremental decoder: :meth:`feed` bytes as they arrive, get whole events back.

    Linear in the bytes fed, however they are split: a chunk without a line end
    is only appended to the unfinished line's pieces (joined once its end comes),
    so a server dripping one endless line in tiny pieces costs no more than one
    sending it whole. ``scanned`` counts the bytes looked at, for that guarantee.
    """

    __slots__ = ("_pieces", "_pending", "_data", "_event", "_id", "_has_data", "comments", "scanned")

    def __init__(self) -> None:
        self._pieces: list[bytes] = []  # the unfinished last line, as it arrived
        self._pending = 0
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._has_data = False
        self.comments = 0
        self.scanned = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume bytes and return the events they complete."""
        self.scanned += len(chunk)
        held_cr = bool(self._pieces) and self._pieces[-1].endswith(b"\r")
        if b"\n" not in chunk and b"\r" not in chunk and not held_cr:
            if chunk:
                self._pieces.append(chunk)
                self._pending += len(chunk)
            return []
        buf = b"".join(self._pieces) + chunk if self._pieces else chunk
        self.scanned += self._pending
        # A trailing CR may be the first half of CRLF: keep it until the next chunk.
        cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        body, held = buf[:cut], buf[cut:]
        lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        rest = lines.pop() + held  # the unfinished last line
        self._pieces = [rest] if rest else []
        self._pending = len(rest)
        events: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw)
            if event is not None:
                events.append(event)
        return events

    def pending_bytes(self) -> int:
        """Bytes buffered in an unfinished line (for size caps)."""
        return self._pending

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
