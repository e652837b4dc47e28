"""Servers: listening sockets and accept loops, one task per connection, built on :mod:`yieldio.io`.

- :mod:`.tcp`: ``tcp_listen``, ``serve``, ``tcp_server`` (plain or TLS).
- :mod:`.unix`: ``unix_listen``, ``unix_server`` (stale files replaced, live paths refused).
- :mod:`.udp`: ``serve_datagrams``, ``udp_server``, ``DatagramCounters``.
- :mod:`.proxy_protocol`: PROXY protocol v1/v2 headers, parsed without I/O, and ``read_proxy_header``.
"""
