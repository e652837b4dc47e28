"""Servers: listening sockets and accept loops, one task per connection, built on :mod:`yieldio.io`.

- :mod:`.stream`: ``ServerOptions``, ``tcp_listen``, ``serve``, ``tcp_server`` (TCP, TLS; Unix uses ``serve``).
- :mod:`.unix`: ``unix_listen``, ``unix_server`` (stale files replaced, live paths refused).
- :mod:`.udp`: ``serve_datagrams``, ``udp_server``, ``DatagramCounters``.
- :mod:`.proxy_protocol`: PROXY protocol v1/v2 headers, parsed without I/O, and ``read_proxy_header``.
- :mod:`.echo`: the echo protocol: framers without I/O, and the connection handler that drives them.
- :mod:`.listeners`: a set of listeners of any kind, opened all or none, served by one kernel.
- :mod:`.workers`: ``--workers N``: processes sharing a port, supervised.
"""
