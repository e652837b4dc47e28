"""The instrument interface: what the kernel can tell a watcher, and the index that makes it cheap.

An instrument (the idea of trio's Instrument API) is told of scheduling events, in the
tutorial's terms:

- ``task_spawned(task)``: a new task joins the ready queue;
- ``task_resumed(task)``: the scheduler runs it (``next(task)`` in the tutorial);
- ``task_yielded(task, trap)``: it gave control back, saying what it waits for;
- ``task_woken(task, why)``: it leaves a waiting area for the ready queue
  (``why`` is ``"poll: fd 7 readable"``, ``"timer"``...);
- ``task_cancelled(task, exc)``: an exception is on its way to its wait point;
- ``task_finished(task)``: it returned, or crashed (``task.exception``).

Every hook is optional. :class:`Instrument` gives each a no-op default, so a subclass
overrides the events it cares about; an object that merely has some of these methods
serves as well. The hooks an instrument really has (not the no-op defaults) are looked up
once, when it is added, and filed by event in a :class:`HookIndex`: the kernel then calls
exactly those, with no lookup per event, and an event nobody listens to costs an empty
tuple's truth test. With no instrument at all, the hot loop tests one empty list.

This module is what the kernel imports; the tracer and the task table, which watch through
this interface, live in :mod:`yieldio.core.instrument`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .kernel import Task

Hook = Callable[..., None]

EVENTS = ("task_spawned", "task_resumed", "task_yielded", "task_woken", "task_cancelled", "task_finished")


class Instrument(Protocol):
    """What a watcher of the scheduler may define; every hook has a no-op default."""

    def task_spawned(self, task: Task) -> None:
        return None

    def task_resumed(self, task: Task) -> None:
        return None

    def task_yielded(self, task: Task, trap: Any) -> None:
        return None

    def task_woken(self, task: Task, why: str) -> None:
        return None

    def task_cancelled(self, task: Task, exc: BaseException) -> None:
        return None

    def task_finished(self, task: Task) -> None:
        return None


def _defined_hook(instrument: object, event: str) -> Hook | None:
    """``instrument``'s hook for ``event``, unless it has none or only :class:`Instrument`'s no-op."""
    hook = getattr(instrument, event, None)
    if hook is None or getattr(type(instrument), event, None) is getattr(Instrument, event):
        return None
    return hook  # type: ignore[no-any-return]


class HookIndex:
    """Per event, the hooks of the instruments that define it, as a tuple: replaced, never mutated,
    when an instrument comes or goes, so the kernel iterates it without copying."""

    __slots__ = ("_owners", *EVENTS)

    def __init__(self) -> None:
        self.task_spawned: tuple[Hook, ...] = ()
        self.task_resumed: tuple[Hook, ...] = ()
        self.task_yielded: tuple[Hook, ...] = ()
        self.task_woken: tuple[Hook, ...] = ()
        self.task_cancelled: tuple[Hook, ...] = ()
        self.task_finished: tuple[Hook, ...] = ()
        self._owners: dict[Hook, object] = {}  # each hook's instrument, to remove it when a hook raises

    def add(self, instrument: object) -> None:
        for event in EVENTS:
            hook = _defined_hook(instrument, event)
            if hook is not None:
                self._owners[hook] = instrument
                setattr(self, event, (*getattr(self, event), hook))

    def remove(self, instrument: object) -> None:
        for event in EVENTS:
            hooks: tuple[Hook, ...] = getattr(self, event)
            setattr(self, event, tuple(hook for hook in hooks if self._owners.get(hook) is not instrument))
        self._owners = {hook: owner for hook, owner in self._owners.items() if owner is not instrument}

    def owner(self, hook: Hook) -> object:
        return self._owners.get(hook)
