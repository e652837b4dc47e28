"""Applications built on the library: what the ``yieldio`` command runs.

- :mod:`.echo`: the echo protocol (framers without I/O) and its connection handler.
- :mod:`.client`: ``yieldio connect``, an interactive client on the kernel.
- :mod:`.workers`: ``--workers N``, processes sharing a port, supervised.
- :mod:`.cli`: the command line itself.

Nothing in the layers below imports from here.
"""
