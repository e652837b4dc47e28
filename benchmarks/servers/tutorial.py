"""The python-mastery exercise 8.5 select() scheduler, as an echo server.

Why it is here: it is the 20-line baseline that yieldio grew out of, so the
benchmarks show what the real library buys over the teaching version.  It is
kept as the tutorial wrote it (blocking sockets, a ``yield`` before every
recv/send, its per-connection prints) with only the changes the benchmark
needs: a pure echo (no ``GOT:`` prefix), ``recv(65536)`` + ``sendall`` so
large messages are echoed in full, a backlog of 1024 so many clients can
connect, and host/port from the command line.

Known limit, kept on purpose: ``select()`` cannot watch file descriptors
above 1023, so with thousands of connections it raises ValueError and the
server dies; the runner records that as an error.
"""

import argparse
from collections import deque
from select import select
from socket import AF_INET, SO_REUSEADDR, SOCK_STREAM, SOL_SOCKET, socket

tasks = deque()
recv_wait = {}  # sock -> task waiting to receive
send_wait = {}  # sock -> task waiting to send


def run():
    while any([tasks, recv_wait, send_wait]):
        while not tasks:
            can_recv, can_send, _ = select(recv_wait, send_wait, [])
            for s in can_recv:
                tasks.append(recv_wait.pop(s))
            for s in can_send:
                tasks.append(send_wait.pop(s))
        task = tasks.popleft()
        try:
            reason, resource = next(task)
            if reason == "recv":
                recv_wait[resource] = task
            elif reason == "send":
                send_wait[resource] = task
            else:
                raise RuntimeError("Unknown reason %r" % reason)  # noqa: UP031 - as the tutorial wrote it
        except StopIteration:
            print("Task done")


def tcp_server(address, handler):
    sock = socket(AF_INET, SOCK_STREAM)
    sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(1024)
    while True:
        yield "recv", sock
        client, addr = sock.accept()
        tasks.append(handler(client, addr))


def echo_handler(client, address):
    print("Connection from", address)
    while True:
        yield "recv", client
        data = client.recv(65536)
        if not data:
            break
        yield "send", client
        client.sendall(data)
    print("Connection closed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    tasks.append(tcp_server((args.host, args.port), echo_handler))
    run()
