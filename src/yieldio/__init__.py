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

Every public name is here, as ``yieldio.<name>``. The package is layered, each
layer a sub-package that imports only from the layers before it:

- :mod:`yieldio.core`: the scheduler (kernel, poller, traps, scopes, sync, hooks, instrument, runner);
- :mod:`yieldio.io`: sockets (TLS included), streams, Unix and UDP sockets, listener URLs;
- :mod:`yieldio.servers`: accept loops and ``ServerOptions``, the echo protocol, listeners, workers;
- :mod:`yieldio.observe`: metrics;
- :mod:`yieldio.cli`: the ``yieldio`` command, one module per subcommand.
"""

from .core import traps
from .core.kernel import Cancelled, Kernel, Task, current_kernel, running_kernel
from .core.runner import extend_from_environment, run, tasks
from .core.scopes import TaskGroup, TaskTimeout, timeout_after
from .core.sync import Condition, Event, Lock, Queue, QueueClosed, QueueEmpty, QueueFull, Semaphore
from .core.traps import current_task, sleep, spawn, wait_readable, wait_writable
from .io.sockets import DatagramTooLarge, Socket, connect_staggered, format_address, open_connection, run_in_thread
from .io.streams import IncompleteReadError, LimitOverrunError, Stream, StreamBuffer
from .io.udp import udp_bind
from .io.unix import format_unix_address, open_unix_connection
from .observe.environment import monitor_from_environment, trace_file_from_environment
from .servers.echo import ChunkFramer, LineFramer, echo_handler, make_echo_handler
from .servers.stream import ServerOptions, serve, tcp_listen, tcp_server
from .servers.udp import DatagramCounters, serve_datagrams, udp_server
from .servers.unix import UnixListener, unix_listen, unix_server
from .version import __version__

# YIELDIO_MONITOR and YIELDIO_TRACE_FILE work for every program run by run(): the runner (core) is told of
# them here, where every layer is in sight, instead of importing the layer above it
extend_from_environment(monitor_from_environment)
extend_from_environment(trace_file_from_environment)

__all__ = [
    "Cancelled",
    "ChunkFramer",
    "Condition",
    "DatagramCounters",
    "DatagramTooLarge",
    "Event",
    "IncompleteReadError",
    "Kernel",
    "LimitOverrunError",
    "LineFramer",
    "Lock",
    "Queue",
    "QueueClosed",
    "QueueEmpty",
    "QueueFull",
    "Semaphore",
    "ServerOptions",
    "Socket",
    "Stream",
    "StreamBuffer",
    "Task",
    "TaskGroup",
    "TaskTimeout",
    "UnixListener",
    "__version__",
    "connect_staggered",
    "current_kernel",
    "current_task",
    "echo_handler",
    "format_address",
    "format_unix_address",
    "make_echo_handler",
    "open_connection",
    "open_unix_connection",
    "run",
    "run_in_thread",
    "running_kernel",
    "serve",
    "serve_datagrams",
    "sleep",
    "spawn",
    "tasks",
    "tcp_listen",
    "tcp_server",
    "timeout_after",
    "traps",
    "udp_bind",
    "udp_server",
    "unix_listen",
    "unix_server",
    "wait_readable",
    "wait_writable",
]
