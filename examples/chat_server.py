"""A line-based chat room: each line a client sends goes to every other client.

    python examples/chat_server.py [--host 127.0.0.1] [--port 25001]
    nc 127.0.0.1 25001        # in two or more terminals

Each connection is two tasks: the handler reads lines from the client and
puts them into every other member's *outbox*, a bounded :class:`yieldio.Queue`;
a writer task takes lines from its own outbox and sends them. Nobody ever
waits on another client's socket: a broadcast is only ``put_nowait`` calls.

A client that stops reading fills its socket buffers, then its outbox. That
is the moment to choose: stalling the sender (a blocking ``put``) would let one
silent client freeze the whole room, and dropping its lines silently would lie
to it. So a full outbox disconnects that client, with a line in the log, and
everyone else goes on.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import yieldio
from yieldio import Queue, QueueFull, Stream, TaskGroup

log = logging.getLogger("chat")

OUTBOX_LINES = 256  # lines waiting for one client before it counts as not reading
MAX_LINE = 4096


class Member:
    def __init__(self, name: str, task: yieldio.Task) -> None:
        self.name = name
        self.task = task
        self.outbox: Queue[bytes] = Queue(OUTBOX_LINES)


class Room:
    def __init__(self) -> None:
        self.members: list[Member] = []

    def broadcast(self, line: bytes, sender: Member | None = None) -> None:
        for member in list(self.members):
            if member is sender:
                continue
            try:
                member.outbox.put_nowait(line)
            except QueueFull:
                log.warning("%s is not reading: disconnected", member.name)
                self.leave(member)
                yieldio.current_kernel().cancel_nowait(member.task)

    def join(self, member: Member) -> None:
        self.members.append(member)
        self.broadcast(f"* {member.name} joined ({len(self.members)} here)\n".encode(), member)

    def leave(self, member: Member) -> None:
        if member in self.members:
            self.members.remove(member)
            self.broadcast(f"* {member.name} left\n".encode())


async def deliver(member: Member, stream: Stream) -> None:
    async for line in member.outbox:
        await stream.write(line)


def make_handler(room: Room) -> Any:
    async def chat(client: yieldio.Socket, address: Any) -> None:
        member = Member(yieldio.format_address(address), await yieldio.current_task())
        stream = Stream(client)
        room.join(member)
        try:
            async with TaskGroup() as group:
                await group.spawn(deliver(member, stream), name=f"deliver to {member.name}")
                while line := await stream.readline(MAX_LINE):
                    room.broadcast(member.name.encode() + b": " + line.rstrip(b"\r\n") + b"\n", member)
                group.cancel_remaining()
        except yieldio.LimitOverrunError:
            log.warning("%s sent a line over %d bytes: disconnected", member.name, MAX_LINE)
        finally:
            room.leave(member)

    return chat


def main() -> None:
    parser = argparse.ArgumentParser(description="A line-based chat room.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=25001, help="0 picks a free one")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    yieldio.run(yieldio.tcp_server((args.host, args.port), make_handler(Room())))


if __name__ == "__main__":
    main()
