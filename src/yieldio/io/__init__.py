"""I/O: what a task reads and writes through, built on the core's traps.

- :mod:`.sockets`: :class:`~.sockets.Socket`, a non-blocking socket whose calls suspend only
  the calling task (TLS included: ``start_tls``); ``open_connection`` (Happy Eyeballs,
  ``ssl=``); ``connect_staggered``; ``run_in_thread``; ``format_address``.
- :mod:`.streams`: ``Stream``, buffered reads and writes; ``StreamBuffer``, its parser without I/O.
- :mod:`.unix`: ``open_unix_connection``, ``format_unix_address``.
- :mod:`.udp`: ``udp_bind`` (``Socket.recvfrom`` raises ``DatagramTooLarge`` rather than cut a datagram).
- :mod:`.buffers`: ``receive_buffer``, a buffer for large reads placed where the kernel copies into it at full speed.
- :mod:`.urls`: ``tcp://``, ``tls://``, ``udp://``, ``unix:`` URLs, parsed without I/O: where to listen or connect.
"""
