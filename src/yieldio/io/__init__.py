"""I/O: what a task reads and writes through, built on the core's traps.

- :mod:`.sockets`: :class:`~.sockets.Socket`, a non-blocking socket whose calls suspend only
  the calling task; ``open_connection``; ``run_in_thread``; ``format_address``.
"""
