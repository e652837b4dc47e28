"""The monitor: what a running kernel is doing, seen from a thread of its own.

The question a monitor must answer best is "what is the scheduler doing right
now?", and the hardest case is the one it is asked for most: the answer is
"nothing else", because one task has held it for seconds (a ``time.sleep`` in
a handler, a loop that never yields). A monitor that ran as a task of the
kernel it watches would wait in the same ready queue as everyone else, and
answer once the culprit lets go. So this one runs in threads: a sampler, and
the HTTP endpoint of :mod:`.monitor_web` (which serves the page and the
``yieldio ps``/``where``/``cancel``/``top`` commands).

*Reading.* The kernel's structures belong to the kernel's thread. To read
them consistently the monitor hands the kernel a call
(:meth:`~yieldio.core.kernel.Kernel.call_soon_threadsafe`, the one method safe
from another thread), which takes the snapshot between two turns, when nothing
is half done, and waits a little for the answer. If none comes within the
``blocked_after`` threshold (0.5 s by default) the scheduler is blocked: the
sampler knows by which task and since when, ``sys._current_frames()`` gives
the kernel thread's stack at this very moment, and the rest is read from here,
each structure copied whole under the GIL, and labelled as read that way.

*Changing.* Cancel, pause, step and resume are calls handed over the same
way; nothing here writes to the kernel's structures.

*Step mode*, for learners: :meth:`~yieldio.core.kernel.Kernel.hold` keeps the
ready tasks in the ready queue; each step lets the first one run once and
reports, from the kernel's thread at the end of that turn, which task ran,
what it yielded and where it went (``recv_wait[fd 9]``, back to ``tasks``...).

*What it costs.* A kernel with no monitor pays nothing but a test of a local
per step. With one, the kernel is watched: each task counts its steps (an
integer added to per step). A task's run time is not timed but sampled: every
20 ms the sampler notes which task runs and credits it with the time since
the last sample. Two clock reads per step would cost more than the whole
budget the monitor has (3 % of an echoed message's 5 µs); the sampler costs
a wake-up every 20 ms (some 4 ms of CPU a second on a virtual machine whose
timers are slow) and nothing between them, and looks less often, down to
every 100 ms, while the kernel is seen idle. The last scheduling events (the page's
trace) come from an instrument attached only while a page is open.

The words are the tutorial's: the ready queue is ``tasks``, the waiting areas
are ``recv_wait`` and ``send_wait``.
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..core.hooks import Instrument
from ..core.instrument import word_trap
from ..core.kernel import CountedTask, Kernel, Task, Timer
from .tracefile import peer_of

log = logging.getLogger("yieldio")

Json = dict[str, Any]

SAMPLE_INTERVAL = 0.02  # seconds between two looks at the task that runs
IDLE_INTERVAL = 0.1  # ... up to this long, while the kernel is seen running none
BLOCKED_AFTER = 0.5  # a step longer than this holds the scheduler: ps says so first
EVENTS_KEPT = 200  # scheduling events kept for the page's trace
FEED_BURST = 200  # events recorded before the feed checks its pace
FEED_RATE = 2000.0  # events a second past which the feed records bursts only
FEED_REST = 1.0  # seconds between two bursts, then
STACK_LIMIT = 64  # frames


class UnknownTask(LookupError):
    """No task has that id (any more)."""


class Refused(Exception):
    """A request the monitor will not carry out: read-only, or not in step mode."""


# -- what a task is doing, in the tutorial's words ------------------------------------------


_TRAP_TEXT = {
    "recv": "('recv', fd {})",
    "send": "('send', fd {})",
    "sleep": "('sleep', {:g})",
    "join": "('join', task {})",
    "wait": "('wait', task {})",
    "cancel": "('cancel', task {})",
    "park": "('park', waiters)",
}
_DESTINATION = {
    "recv": "recv_wait[fd {}]",
    "send": "send_wait[fd {}]",
    "join": "joined on task {}",
    "wait": "joined on task {}",
    "cancel": "joined on task {}",
    "park": "parked (a queue, lock or event)",
    "sleep": "sleeping {:g}s",
    "sleep 0": "tasks (the end of the queue)",
}
_ANSWERED = "tasks (answered at once: it runs again next)"


def trap_text(trap: Any) -> str:
    """What a task yielded, as the tutorial would write it: ``('recv', fd 9)``."""
    return word_trap(trap, _TRAP_TEXT, "('{op}', ...)", "{trap!r:.60}")


def destination(trap: Any) -> str:
    """Where yielding ``trap`` sends a task: the waiting area, or back to the ready queue."""
    return word_trap(trap, _DESTINATION, _ANSWERED, _ANSWERED)


def wall_clock(seconds: float) -> str:
    """An epoch time as HH:MM:SS.mmm, local time."""
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{int(seconds % 1 * 1000):03d}"


def frame_entry(frame: FrameType) -> Json:
    code = frame.f_code
    line = frame.f_lineno or code.co_firstlineno
    return {
        "file": code.co_filename,
        "line": line,
        "function": code.co_qualname,
        "code": linecache.getline(code.co_filename, line).strip(),
    }


def coroutine_stack(coro: Any) -> list[Json]:
    """A parked task's stack, outermost first: its own frame, then down through what it awaits
    (``cr_await``) or yields from (``gi_yieldfrom``), to the frame that yielded to the kernel."""
    stack: list[Json] = []
    link = coro
    while link is not None and len(stack) < STACK_LIMIT:
        frame = getattr(link, "cr_frame", None) or getattr(link, "gi_frame", None) or getattr(link, "ag_frame", None)
        if frame is None:
            break
        stack.append(frame_entry(frame))
        link = getattr(link, "cr_await", None) or getattr(link, "gi_yieldfrom", None) or getattr(link, "ag_await", None)
    return stack


def thread_stack(thread_id: int, task: Task) -> list[Json]:
    """The running task's stack now, outermost first: the kernel thread's frames, from the innermost up to
    the task's own (its coroutine's frame; what lies above it is the kernel's loop and the runner)."""
    outermost = getattr(task.coro, "cr_frame", None) or getattr(task.coro, "gi_frame", None)
    frame = sys._current_frames().get(thread_id)
    frames: list[FrameType] = []
    while frame is not None:
        frames.append(frame)
        if frame is outermost:
            break
        frame = frame.f_back
    return [frame_entry(frame) for frame in reversed(frames[:STACK_LIMIT])]


def program() -> str:
    """The command line this process runs, as it was typed (``yieldio serve ...``, not ``.../__main__.py``)."""
    first = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    if first.endswith(os.path.join("yieldio", "__main__.py")):
        first = "yieldio"
    return " ".join([first, *sys.argv[1:]])


# -- the sampler and the page's feed --------------------------------------------------------


class Sampler:
    """Every SAMPLE_INTERVAL, which task the kernel is running: it is credited with the time since the
    last look (:attr:`CountedTask.run_time`), and the step under way is remembered with the time it
    was first seen, so that a step that never ends is noticed without asking the kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.step: tuple[CountedTask, int, float] | None = None  # (task, its step number, first seen)
        self._sampling = True
        self._thread = threading.Thread(target=self._run, name="yieldio monitor: sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._sampling = False
        self._thread.join(1.0)

    def _run(self) -> None:
        last = time.monotonic()
        interval = SAMPLE_INTERVAL
        while self._sampling:
            time.sleep(interval)  # half the CPU of Event.wait(timeout) per wake-up, which matters here
            now = time.monotonic()
            task = self.kernel.current
            if isinstance(task, CountedTask):
                task.run_time += now - last  # each look stands for the time since the last one
                step = self.step
                if step is None or step[0] is not task or step[1] != task.steps:
                    self.step = (task, task.steps, now)
                interval = SAMPLE_INTERVAL
            else:
                self.step = None
                interval = min(interval * 2, IDLE_INTERVAL)  # an idle program is looked at less and less often
            last = now

    def running(self) -> tuple[CountedTask, float] | None:
        """The task whose step is under way, and for how long it has been, as last sampled."""
        step = self.step
        return None if step is None else (step[0], time.monotonic() - step[2])


class LiveFeed(Instrument):
    """The last scheduling events, for the page's trace: an instrument, attached while a page is open.

    Every event is a Python call: under load (tens of thousands of events a second) recording them
    all would cost the server a third of its CPU, for a trace nobody can read at that speed. So the
    feed looks at its pace every FEED_BURST events: past FEED_RATE events a second, it detaches for
    FEED_REST seconds and then records another burst; ``busy`` is the rate it saw (None when it keeps
    up with every event). Kernel thread only, but for reading ``events``, ``seq`` and ``busy``.
    """

    def __init__(self, kernel: Kernel, wanted: Callable[[], bool]) -> None:
        self.kernel = kernel
        self.wanted = wanted  # whether a page is still open
        self.events: deque[tuple[int, float, str, Task, Any]] = deque(maxlen=EVENTS_KEPT)
        self.seq = 0
        self.busy: float | None = None
        self._attached = False
        self._burst_began = 0.0
        self._in_burst = 0

    def attach(self) -> None:
        if self.wanted() and not self._attached:
            self.kernel.add_instrument(self)
            self._attached = True
            self._burst_began, self._in_burst = time.monotonic(), 0

    def detach(self) -> None:
        if self._attached:
            self._attached = False
            if self in self.kernel.instruments:
                self.kernel.remove_instrument(self)

    def _add(self, event: str, task: Task, detail: Any) -> None:
        self.seq += 1
        self.events.append((self.seq, time.time(), event, task, detail))
        self._in_burst += 1
        if self._in_burst >= FEED_BURST:
            now = time.monotonic()
            rate = self._in_burst / max(now - self._burst_began, 1e-6)
            self.busy = rate if rate > FEED_RATE else None
            if self.busy is not None:
                self.detach()
                self.kernel.call_later(FEED_REST, lambda _: self.attach())
            self._burst_began, self._in_burst = now, 0

    def task_spawned(self, task: Task) -> None:
        self._add("spawn", task, None)

    def task_resumed(self, task: Task) -> None:
        self._add("run", task, None)

    def task_yielded(self, task: Task, trap: Any) -> None:
        self._add("yield", task, trap)

    def task_woken(self, task: Task, why: str) -> None:
        self._add("wake", task, why)

    def task_cancelled(self, task: Task, exc: BaseException) -> None:
        self._add("cancel", task, type(exc).__name__)

    def task_finished(self, task: Task) -> None:
        self._add("finish", task, task.exception)


def event_json(seq: int, when: float, event: str, task: Task, detail: Any) -> Json:
    if event == "spawn":
        text = "created, appended to tasks"
    elif event == "run":
        text = "taken from tasks and resumed"
    elif event == "yield":
        text = f"yielded {trap_text(detail)} -> {destination(detail)}"
    elif event == "wake":
        text = f"{detail} -> tasks"
    elif event == "cancel":
        text = f"{detail} thrown at its wait point"
    else:
        text = "returned" if detail is None else f"raised {type(detail).__name__}"
    return {"seq": seq, "time": when, "event": event, "id": task.id, "name": task.name, "detail": text}


# -- snapshots ------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What the kernel holds, gathered in one go (on its thread, or from the monitor's when it is blocked)."""

    taken: float  # time.monotonic()
    wall: float  # time.time()
    tasks: list[tuple[Task, Any, str | None]]  # (task, where it waits, its peer), by id
    ready: list[Task]
    stepping: bool
    running: Task | None = None


class _Reply:
    """The answer to a call handed to the kernel, waited for by a monitor thread."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def give(self, value: Any) -> None:
        self.value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    def wait(self, patience: float) -> bool:
        if not self._done.wait(patience):
            return False
        if self.error is not None:
            raise self.error
        return True


class Monitor:
    """A watched kernel's view for the endpoint: snapshots, stacks, and the calls that change it.

    Made on the thread that runs the kernel, before its first task (it calls ``kernel.watch()``);
    every other method is for the monitor's threads.
    """

    def __init__(self, kernel: Kernel, *, read_only: bool = False, about: Json | None = None) -> None:
        kernel.watch()
        self.kernel = kernel
        self.read_only = read_only
        self.about = dict(about or {})  # the endpoint's own facts: its address, the other workers
        self.kernel_thread = threading.get_ident()
        self.sampler = Sampler(kernel)
        self.feed = LiveFeed(kernel, wanted=lambda: self._pages > 0)
        self.gather_seconds = 0.0  # what the last snapshot cost the kernel's thread
        self.last_step: Json | None = None
        self.steps_reported = 0
        self._pages = 0
        self._pages_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._peers: dict[Task, str] = {}  # peers found on a classic trap's socket (a syscall each): kept

    def start(self) -> None:
        self.sampler.start()

    def close(self) -> None:
        self.sampler.stop()

    # -- asking the kernel

    def _ask(self, call: Callable[[_Reply], None], patience: float) -> _Reply | None:
        """Hand ``call(reply)`` to the kernel's thread; the reply if it came within ``patience`` seconds."""
        reply = _Reply()

        def on_kernel_thread() -> None:
            try:
                call(reply)
            except Exception as error:  # noqa: BLE001 - the monitor's thread re-raises it
                reply.fail(error)

        self.kernel.call_soon_threadsafe(on_kernel_thread)
        return reply if reply.wait(patience) else None

    def _gather(self, consistent: bool) -> Snapshot:
        """Everything a state shows. On the kernel's thread, between turns; else read as it is."""
        started = time.perf_counter()
        kernel = self.kernel
        if consistent:
            self.kernel_thread = threading.get_ident()
        peers = self._peers if consistent else dict(self._peers)
        rows = [(task, kernel.where(task), peers.get(task) or peer_of(task)) for task in kernel.tasks()]  # by id
        if consistent:
            # a classic task's peer costs a getpeername() call: it is remembered while the task lives
            self._peers = {task: peer for task, _, peer in rows if peer is not None and task.supervisor is None}
            self.gather_seconds = time.perf_counter() - started
        return Snapshot(time.monotonic(), time.time(), rows, kernel.ready_queue(), kernel.holding)

    def _read_here(self) -> Snapshot:
        """A snapshot read from this thread while the kernel's is busy: each structure is copied whole
        under the GIL, but the kernel may move between two copies; a copy that fails is tried again."""
        for _ in range(5):
            try:
                snapshot = self._gather(consistent=False)
            except RuntimeError:  # a dict changed size as it was read
                continue
            snapshot.running = self.kernel.current
            return snapshot
        return Snapshot(time.monotonic(), time.time(), [], [], self.kernel.holding, self.kernel.current)

    # -- what the endpoint serves

    def state(self, blocked_after: float = BLOCKED_AFTER, limit: int | None = None) -> Json:
        """The scheduler's state: from its own thread if it answers within ``blocked_after``, else
        read from here, with the task that blocks it, since when, and its stack now."""
        running = self.sampler.running()
        if running is None or running[1] < blocked_after:
            patience = blocked_after - (0.0 if running is None else running[1])
            reply = self._ask(lambda reply: reply.give(self._gather(consistent=True)), max(patience, 0.05))
            if reply is not None:
                return self._state_json(reply.value, limit, consistent=True)
            running = self.sampler.running()
        state = self._state_json(self._read_here(), limit, consistent=False)
        if running is not None and running[1] >= blocked_after:
            task, seconds = running
            state["blocked"] = {
                **self._brief(task, peer_of(task)),
                "seconds": round(seconds, 3),
                "since": time.time() - seconds,
                "stack": thread_stack(self.kernel_thread, task),
            }
            state["note"] = (
                "read from the monitor's thread while the scheduler is blocked: a moment may separate two lines"
            )
        else:
            state["note"] = (
                f"the scheduler did not answer within {blocked_after:g}s; this was read from the monitor's thread"
            )
        return state

    def task(self, task_id: int, blocked_after: float = BLOCKED_AFTER) -> Json:
        """One task's state and its stack (where it waits, through ``await`` and ``yield from``)."""

        def detail(snapshot: Snapshot, consistent: bool) -> Json:
            for task, where, peer in snapshot.tasks:
                if task.id == task_id:
                    running = task is snapshot.running
                    entry = self._task_json(task, where, peer, snapshot, running)
                    stack = thread_stack(self.kernel_thread, task) if running else coroutine_stack(task.coro)
                    return {"task": entry, "stack": stack, "consistent": consistent}
            raise UnknownTask(task_id)

        running = self.sampler.running()
        if running is None or running[1] < blocked_after:
            reply = self._ask(lambda reply: reply.give(detail(self._gather(consistent=True), True)), blocked_after)
            if reply is not None:
                result: Json = reply.value
                return result
        return detail(self._read_here(), False)

    def cancel(self, task_id: int) -> Json:
        """Cancel a task (through the kernel's thread); if the kernel is blocked, the cancel waits its turn."""
        if self.read_only:
            raise Refused("this monitor is read-only (--monitor-read-only): no cancel")
        task = next((task for task in self.kernel.tasks() if task.id == task_id), None)
        if task is None:
            raise UnknownTask(task_id)
        brief = self._brief(task, peer_of(task))

        def on_kernel(reply: _Reply) -> None:
            reply.give(self.kernel.cancel_nowait(task))

        reply = self._ask(on_kernel, 1.0)
        if reply is None:
            return {"task": brief, "cancelled": False, "queued": True}
        return {"task": brief, "cancelled": bool(reply.value), "queued": False}

    def pause(self) -> Json:
        self._changing("pause")
        self._on_kernel(self.kernel.hold)
        return {"stepping": True}

    def resume(self) -> Json:
        self._changing("resume")
        self._on_kernel(self.kernel.release)
        return {"stepping": False}

    def step(self, patience: float = 5.0) -> Json:
        """In step mode, run one step of the first ready task; what it ran, yielded and where it went."""
        self._changing("step")
        with self._step_lock:  # one step at a time: the kernel has room for one

            def begin(reply: _Reply) -> None:
                if not self.kernel.holding:
                    raise Refused("not paused: pause the scheduler first")
                self.kernel.step(lambda task: reply.give(self._step_report(task)))

            reply = self._ask(begin, patience)
            if reply is None:
                raise Refused(f"the step did not end within {patience:g}s: the scheduler is busy")
            report: Json = reply.value
            return report

    def _changing(self, what: str) -> None:
        if self.read_only:
            raise Refused(f"this monitor is read-only (--monitor-read-only): no {what}")

    def _on_kernel(self, call: Callable[[], None], patience: float = 1.0) -> None:
        def call_and_reply(reply: _Reply) -> None:
            call()
            reply.give(None)

        if self._ask(call_and_reply, patience) is None:
            raise Refused(f"the scheduler did not answer within {patience:g}s: it is busy")

    def _step_report(self, task: Task | None) -> Json:
        """On the kernel's thread, once the step is over: which task ran, what it yielded, where it went."""
        if task is None:
            report: Json = {
                "ran": None,
                "text": "no task is ready: each waits in recv_wait, send_wait, asleep or for another task, "
                "and the scheduler waits in poll() for one of them to become ready",
            }
        else:
            where = self.kernel.where(task)
            if task.done:
                error = task.exception
                went = "finished: returned" if error is None else f"finished: raised {type(error).__name__}"
                yielded = None
            else:
                yielded = trap_text(task.trap)
                went = self._place(task, where)
            report = {
                "ran": self._brief(task, peer_of(task)),
                "step": getattr(task, "steps", None),
                "yielded": yielded,
                "went": went,
                "text": f"task {task.id} {task.name} ran"
                + ("" if yielded is None else f", yielded {yielded}")
                + f" and went to {went}",
            }
        self.steps_reported += 1
        report["seq"] = self.steps_reported
        self.last_step = report
        return report

    def _place(self, task: Task, where: Any) -> str:
        if where is None:
            queue = self.kernel.ready_queue()
            position = next((i for i, t in enumerate(queue) if t is task), len(queue) - 1) + 1
            return f"tasks (the ready queue), place {position} of {len(queue)}"
        kind, place = where
        if kind in ("recv", "send"):
            return f"{kind}_wait[fd {place}]"
        if kind == "sleep":
            return f"sleeping until {wall_clock(time.time() + place.deadline - time.monotonic())}"
        if kind == "task":
            return f"joined on task {place.id}"
        return "parked (a queue, lock or event)"

    # -- the page

    def page_opened(self) -> None:
        """A page is watching: attach the feed of scheduling events."""
        with self._pages_lock:
            self._pages += 1
            if self._pages == 1:
                self.kernel.call_soon_threadsafe(self.feed.attach)

    def page_closed(self) -> None:
        """The last page gone, the feed is detached, and a paused scheduler resumes: a learner who
        closes the tab must not leave the program frozen."""
        with self._pages_lock:
            self._pages -= 1
            if self._pages == 0:
                self.kernel.call_soon_threadsafe(self._detach_feed)

    def _detach_feed(self) -> None:
        if self._pages:
            return
        self.feed.detach()
        if self.kernel.holding:
            self.kernel.release()
            log.info("monitor: the last page closed: the scheduler resumes")

    def events(self, after: int) -> list[Json]:
        """The scheduling events after number ``after`` that the feed still keeps."""
        return [event_json(*event) for event in list(self.feed.events) if event[0] > after]

    # -- JSON

    def _brief(self, task: Task, peer: str | None) -> Json:
        return {"id": task.id, "name": task.name, "peer": peer}

    def _task_json(self, task: Task, where: Any, peer: str | None, snapshot: Snapshot, running: bool) -> Json:
        entry: Json = {
            **self._brief(task, peer),
            "daemon": task.daemon,
            "steps": getattr(task, "steps", None),
            "run_time": round(getattr(task, "run_time", 0.0), 4),
            "age": round(snapshot.taken - task.created, 3),
            "fd": None,
            "deadline": None,
            "target": None,
        }
        if running:
            entry.update(area="running", state="running")
        elif where is None:
            entry.update(area="tasks", state="ready")
        else:
            kind, place = where
            if kind in ("recv", "send"):
                verb = "read" if kind == "recv" else "write"
                entry.update(area=f"{kind}_wait", state=f"waiting to {verb} fd {place}", fd=place)
            elif kind == "sleep":
                timer: Timer = place
                left = timer.deadline - snapshot.taken
                deadline = snapshot.wall + left
                state = f"sleeping until {wall_clock(deadline)} ({max(left, 0.0):.2f}s left)"
                entry.update(area="sleeping", state=state, deadline=deadline)
            elif kind == "task":
                entry.update(area="joined", state=f"joined on task {place.id}", target=place.id)
            else:
                entry.update(area="parked", state="parked (a queue, lock or event)")
        return entry

    def _state_json(self, snapshot: Snapshot, limit: int | None, consistent: bool) -> Json:
        tasks = [
            self._task_json(task, where, peer, snapshot, task is snapshot.running)
            for task, where, peer in snapshot.tasks
        ]
        by_area: dict[str, list[Json]] = {}
        for entry in tasks:
            by_area.setdefault(entry["area"], []).append(entry)
        sleeping = sorted(by_area.get("sleeping", []), key=lambda entry: entry["deadline"])

        def shown(items: list[Any]) -> list[Any]:
            return items if limit is None else items[:limit]

        return {
            **self.about,
            "pid": os.getpid(),
            "program": program(),
            "time": snapshot.wall,
            "consistent": consistent,
            "note": None,
            "blocked": None,
            "stepping": snapshot.stepping,
            "read_only": self.read_only,
            "running": None if snapshot.running is None else snapshot.running.id,
            "trace_busy": None if self.feed.busy is None else round(self.feed.busy),
            "counts": {"tasks": len(tasks), "ready": len(snapshot.ready)}
            | {area: len(by_area.get(area, [])) for area in ("recv_wait", "send_wait", "sleeping", "joined", "parked")},
            "tasks": shown(tasks),
            "ready": shown([task.id for task in snapshot.ready]),
            "sleeping": shown([{"id": e["id"], "deadline": e["deadline"]} for e in sleeping]),
            "waiting": {
                "recv_wait": shown([{"fd": e["fd"], "id": e["id"]} for e in by_area.get("recv_wait", [])]),
                "send_wait": shown([{"fd": e["fd"], "id": e["id"]} for e in by_area.get("send_wait", [])]),
                "joined": shown([{"id": e["id"], "target": e["target"]} for e in by_area.get("joined", [])]),
                "parked": shown([e["id"] for e in by_area.get("parked", [])]),
            },
        }
