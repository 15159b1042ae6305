"""Messages between the service's HTTP process and its composing process: each a 4-byte big-endian
length, then its pickle (the framing of multiprocessing's `Connection`, so the spawned process's end
of a `Pipe` still reads the first one, "ready"). Both sides read in bulk: one `recv` takes every
message waiting instead of two system calls a message, and a plain `pickle.dumps` writes one in a
fraction of what multiprocessing's pickler costs (nothing crossing holds a file descriptor)."""

from __future__ import annotations

import pickle
import socket
from typing import Any

Message = tuple[Any, ...]
"""What crosses. To the composing side: ("spec", key, CompositionSpec) once per composition, then
("ask", Asked), ("drop", ticket), ("close",). Back: ("ready",) or ("failed_start", why) once
started, then ("started", tickets), ("piece", ticket, expert, text), ("done", tickets, served
answers, stats), ("refused", tickets, Refusal), ("failed", tickets, traceback) and, once closed,
("closed",)."""

_CHUNK = 1 << 16


def frame(message: Message) -> bytes:
    """A message as it crosses."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(4, "big") + data


class Frames:
    """Bytes as they arrive, taken out as whole messages, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0
        """Where the first message not yet taken begins (the buffer is compacted when fed)."""

    def feed(self, data: bytes) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def take(self) -> Message | None:
        """The next whole message, or None until its bytes have all arrived."""
        buffer, start = self._buffer, self._start
        if len(buffer) - start < 4:
            return None
        end = start + 4 + int.from_bytes(buffer[start : start + 4], "big")
        if len(buffer) < end:
            return None
        message = pickle.loads(buffer[start + 4 : end])
        self._start = end
        return message


class SocketInbox:
    """Messages from a stream socket, read as many at a time as have arrived."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._frames = Frames()

    def next(self, *, wait: bool) -> Message | None:
        """The next message; None when none has arrived and `wait` is false. The other end closing
        reads as ("close",)."""
        while (message := self._frames.take()) is None:
            try:
                data = self._sock.recv(_CHUNK) if wait else self._sock.recv(_CHUNK, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                return ("close",)
            self._frames.feed(data)
        return message
