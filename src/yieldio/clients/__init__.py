"""Clients: what loads a server and checks its answers, built on :mod:`yieldio.io`.

- :mod:`.echo_check`: the messages a load sends and the check of each echo, without I/O.
- :mod:`.load`: connections that send those messages and time their echoes, on the kernel.

Above :mod:`yieldio.servers` (a PROXY protocol header is built with its code); only the
commands (:mod:`yieldio.cli`) import from here.
"""
