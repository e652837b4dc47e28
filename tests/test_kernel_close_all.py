"""Kernel.close_all() called by a task while others are ready in the same turn (a second SIGTERM does it).

The kernel runs the tasks that were ready at the start of a turn; close_all() empties the ready queue,
and the turn must end there, not pop from the empty queue (IndexError, and the server's exit status 1).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import yieldio
from yieldio.core.kernel import Kernel


def test_close_all_from_a_task_with_others_ready_ends_the_run_cleanly() -> None:
    kernel = Kernel()
    ended: list[str] = []

    def busy(name: str) -> Generator[Any, Any, None]:
        try:
            while True:
                yield from yieldio.sleep(0)  # ready at every turn
        finally:
            ended.append(name)

    def closer() -> Generator[Any, Any, None]:
        yield from yieldio.sleep(0)
        kernel.close_all()  # as the signal watcher does on a second SIGTERM

    kernel.spawn(closer(), name="closer")
    for name in ("a", "b", "c"):
        kernel.spawn(busy(name), name=name)
    kernel.run()
    assert sorted(ended) == ["a", "b", "c"]
    assert kernel.tasks() == []
