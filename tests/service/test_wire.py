"""The framing between the service's processes: whole messages in order, however the bytes arrive."""

import socket
from multiprocessing.connection import Connection

from coe.service.wire import Frames, SocketInbox, frame

MESSAGES = [("ask", 1, "x" * 100_000), ("drop", 2), ("close",)]


def test_frames_come_out_whole_and_in_order_fed_a_byte_at_a_time_or_all_at_once() -> None:
    data = b"".join(frame(message) for message in MESSAGES)
    trickled, taken = Frames(), []
    for i in range(len(data)):
        trickled.feed(data[i : i + 1])
        while (message := trickled.take()) is not None:
            taken.append(message)
    assert taken == MESSAGES
    bulk = Frames()
    bulk.feed(data)
    assert [bulk.take() for _ in MESSAGES] == MESSAGES
    assert bulk.take() is None


def test_a_socket_inbox_reads_what_arrived_says_none_without_waiting_and_close_at_eof() -> None:
    ours, theirs = socket.socketpair()
    inbox = SocketInbox(theirs)
    assert inbox.next(wait=False) is None
    ours.sendall(frame(MESSAGES[0]) + frame(MESSAGES[1])[:3])
    assert inbox.next(wait=False) == MESSAGES[0]
    assert inbox.next(wait=False) is None  # half a message is not one
    ours.sendall(frame(MESSAGES[1])[3:])
    assert inbox.next(wait=True) == MESSAGES[1]
    ours.close()
    assert inbox.next(wait=True) == ("close",)
    theirs.close()


def test_a_multiprocessing_connection_reads_a_frame_as_its_own() -> None:
    """The composing process says "ready" in these frames to the `Pipe` end the service waits on."""
    ours, theirs = socket.socketpair()
    connection = Connection(ours.detach())
    theirs.sendall(frame(("ready",)))
    assert connection.recv() == ("ready",)
    connection.close()
    theirs.close()
