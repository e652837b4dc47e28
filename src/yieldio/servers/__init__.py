"""Servers: listening sockets and accept loops, one task per connection, built on :mod:`yieldio.io`.

- :mod:`.tcp`: ``tcp_listen``, ``serve``, ``tcp_server``.
"""
