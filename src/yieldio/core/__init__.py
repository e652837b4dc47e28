"""The core: scheduling and nothing else (no sockets, no servers).

- :mod:`.kernel`: the scheduler; tasks, the ready queue, the waiting areas, timers.
- :mod:`.poller`: the one question the kernel asks the system (epoll, or a selector).
- :mod:`.traps`: the only code that suspends a task.
- :mod:`.scopes`: timeouts and task groups, built on cancellation.
- :mod:`.sync`: Event, Lock, Semaphore, Condition, Queue, built on ``traps.park`` and ``Kernel.wake``.
- :mod:`.hooks`: the instrument interface (the ``Instrument`` Protocol) and the index of hooks the kernel calls.
- :mod:`.instrument`: watching the scheduler through that interface: the tracer, the task table.
- :mod:`.runner`: starting a program: ``run()``, the tutorial's ``tasks``, signals.

Modules here import only each other, and only downwards in that list's
order of dependence (poller and traps at the bottom, runner at the top).
"""
