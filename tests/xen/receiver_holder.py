"""A process that holds Xen's receiver the way a secondary colod does, until it is killed.

colod.xen.receiver's real L{Receiver} starts the stand-in receiver behind
the real guard (tests/xen/stand_in_receiver.py's L{guarded_stand_in}), sends
it the stream of two checkpoints, prints ``sent`` and waits: the test kills
this process as a crash or SIGKILL kills a secondary colod, and checks that
the receiver never failed over.  Usage: receiver_holder.py KEPT DIRECTORY.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import reactor

from colod.protocol import Checkpointed
from colod.xen.receiver import Receiver
from tests.protocol.streams import encode, remus_main
from tests.xen.stand_in_receiver import guarded_stand_in


def main() -> None:
    kept, directory = Path(sys.argv[1]), Path(sys.argv[2])
    receiver = Receiver.start(reactor, guarded_stand_in(kept, directory), b'name = "hvm1"\n', 30.0)

    def send(_: None) -> None:
        receiver.send(encode(remus_main(2), checkpointed=Checkpointed.REMUS))
        print("sent", flush=True)

    receiver.ready.addCallback(send)
    reactor.run()


if __name__ == "__main__":
    main()
