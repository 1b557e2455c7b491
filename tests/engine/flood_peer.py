"""A hostile primary in a process of its own: it passes the real handshake, then never ends a checkpoint.

    python -m tests.engine.flood_peer PORT DOMAIN NODE MODE GUEST_PAGES PASSES DEADLINE

It connects to a secondary colod on 127.0.0.1:PORT as the primary NODE of
DOMAIN, sends the stream's headers as a primary does, and then, with MODE

- ``pages``: the guest's pages 0 to GUEST_PAGES - 1 PASSES times over (each
  pass with new contents), then the pages after them, forever;
- ``records``: 4 MiB HVM_CONTEXT records, forever;

never a CHECKPOINT_END.  It reads the back channel meanwhile, and stops once
the secondary ends the link or DEADLINE seconds have passed.  Its last line
on stdout is JSON: the bytes it sent and the COLOD_REPLICATION_END it was
sent ([reason, text], or null).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator

from colod.engine.checkpoint_buffer import BATCH_SIZE
from colod.protocol import (
    CLOSED,
    NEED_DATA,
    Channel,
    Decoder,
    DomainHeader,
    Encoder,
    HvmContext,
    ImageHeader,
    LibxcContext,
    PageData,
    Record,
    ReplicationEnd,
    StaticDataEnd,
    StreamHeader,
)
from colod.protocol.handshake import Hello, Role
from colod.protocol.wire import PAGE_SIZE


def flood(mode: str, guest_pages: int, passes: int) -> Iterator[Record]:
    """The records after the headers: endless, never a CHECKPOINT_END."""
    if mode == "records":
        while True:
            yield HvmContext(bytes(4 << 20))
    for fill in range(passes):
        for start in range(0, guest_pages, BATCH_SIZE):
            count = min(BATCH_SIZE, guest_pages - start)
            yield PageData(range(start, start + count), bytes(count), bytes([fill]) * (PAGE_SIZE * count))
    start = guest_pages
    while True:
        yield PageData(range(start, start + BATCH_SIZE), bytes(BATCH_SIZE), bytes(PAGE_SIZE * BATCH_SIZE))
        start += BATCH_SIZE


class BackChannel(threading.Thread):
    """Reads what the secondary sends until it closes; keeps its COLOD_REPLICATION_END."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.end: ReplicationEnd | None = None
        self.closed = threading.Event()

    def run(self) -> None:
        pending, greeted, decoder = b"", False, Decoder(Channel.BACK)
        try:
            while data := self.sock.recv(1 << 16):
                if not greeted:
                    pending += data
                    parsed = Hello.parse(pending)
                    if parsed is None:
                        continue
                    greeted, data = True, pending[parsed[1]:]
                if data:  # empty data would tell the decoder the stream ended
                    decoder.receive_data(data)
                while (record := decoder.next_record()) is not NEED_DATA and record is not CLOSED:
                    if isinstance(record, ReplicationEnd):
                        self.end = record
        except OSError:
            pass
        finally:
            self.closed.set()


def main(port: int, domain: str, node: str, mode: str, guest_pages: int, passes: int, deadline: float) -> int:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)
    back = BackChannel(sock)
    back.start()
    encoder = Encoder(Channel.MAIN)
    sent = 0
    ends = time.monotonic() + deadline
    headers = [StreamHeader(), LibxcContext(), ImageHeader(), DomainHeader(), StaticDataEnd()]
    try:
        sock.sendall(Hello(Role.PRIMARY, domain, node).encode())
        for record in headers:
            sock.sendall(encoder.send(record))
        for record in flood(mode, guest_pages, passes):
            if back.closed.is_set() or time.monotonic() > ends:
                break
            for chunk in encoder.send_buffers(record):
                sock.sendall(chunk)
                sent += len(chunk)
    except OSError:
        pass  # the secondary cut the link off
    back.closed.wait(max(0.0, ends - time.monotonic()))
    sock.close()
    end = back.end
    print(json.dumps({"sent": sent, "end": None if end is None else [end.reason.name, end.text]}), flush=True)
    return 0


if __name__ == "__main__":
    port, domain, node, mode, guest_pages, passes, deadline = sys.argv[1:]
    sys.exit(main(int(port), domain, node, mode, int(guest_pages), int(passes), float(deadline)))
