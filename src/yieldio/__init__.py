"""yieldio: cooperative multitasking on generators and coroutines, and the echo server built on it.

The tutorial's API::

    from yieldio import tasks, run
    tasks.append(tcp_server(('', 25000), echo_handler))
    run()

The same kernel runs ``async def`` code::

    async def main():
        sock = await yieldio.open_connection('127.0.0.1', 25000)
        await sock.sendall(b'Hello')
        print(await sock.recv(100))

    yieldio.run(main)
"""

__version__ = "0.1.0"

from .echo import ChunkFramer, LineFramer, echo_handler, make_echo_handler
from .kernel import Cancelled, Kernel, Task, TaskTimeout, current_kernel, run, tasks
from .scopes import TaskGroup, timeout_after
from .server import serve, tcp_listen, tcp_server
from .sockets import Socket, open_connection, run_in_thread
from .traps import current_task, sleep, spawn, wait_readable, wait_writable

__all__ = [
    "Cancelled",
    "ChunkFramer",
    "Kernel",
    "LineFramer",
    "Socket",
    "Task",
    "TaskGroup",
    "TaskTimeout",
    "current_kernel",
    "current_task",
    "echo_handler",
    "make_echo_handler",
    "open_connection",
    "run",
    "run_in_thread",
    "serve",
    "sleep",
    "spawn",
    "tasks",
    "tcp_listen",
    "tcp_server",
    "timeout_after",
    "wait_readable",
    "wait_writable",
]
