"""--trace-file and YIELDIO_TRACE_FILE: the scheduling events as a Chrome trace, checked against the format.

The format (the Trace Event Format that Perfetto's UI and chrome://tracing read): a JSON object
whose ``traceEvents`` is a list of events, each with a ``name``, a phase ``ph``, ``ts`` in
microseconds, a ``pid`` and a ``tid``; ``X`` is a complete slice with its ``dur``, ``i`` an
instant (``s``: its scope), ``s`` and ``f`` the two ends of a flow (an arrow) sharing an ``id``:
the start binds to the slice enclosing it on its track, the end to the next slice that begins on
its track. ``M`` events name processes and tracks. :func:`check_chrome_trace` checks all of that,
and what a single-threaded scheduler adds: no two steps overlap, on any tracks.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import yieldio

from .harness import ProcessServers, connect, recv_exactly, run_serve

PHASES = {"X", "i", "s", "f", "M"}


@dataclass
class Trace:
    events: list[dict[str, Any]]
    tracks: dict[int, str] = field(default_factory=dict)  # tid -> its name
    slices: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # tid -> its X events, by time
    arrows: list[tuple[int, int, str]] = field(default_factory=list)  # (from tid, to tid, name)

    def track(self, pattern: str) -> int:
        (found,) = self.tracks_like(pattern)
        return found

    def tracks_like(self, pattern: str) -> list[int]:
        found = sorted(tid for tid, name in self.tracks.items() if re.fullmatch(pattern, name))
        assert found, (pattern, self.tracks)
        return found


def check_chrome_trace(path: Path) -> Trace:
    """Parse ``path`` and check it against the Chrome trace event format (see the module's docstring)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("traceEvents"), list), "a JSON object with traceEvents"
    trace = Trace(data["traceEvents"])
    starts: dict[Any, dict[str, Any]] = {}
    ends: dict[Any, dict[str, Any]] = {}
    for event in trace.events:
        assert isinstance(event.get("name"), str) and event["name"], event
        assert event.get("ph") in PHASES, event
        assert isinstance(event.get("pid"), int) and isinstance(event.get("tid"), int), event
        if event["ph"] == "M":
            if event["name"] == "thread_name":
                trace.tracks[event["tid"]] = event["args"]["name"]
            continue
        assert isinstance(event.get("ts"), int | float) and event["ts"] >= 0, event
        if event["ph"] == "X":
            assert isinstance(event.get("dur"), int | float) and event["dur"] >= 0, event
            trace.slices.setdefault(event["tid"], []).append(event)
        elif event["ph"] == "i":
            assert event.get("s") in ("t", "p", "g"), event
        else:
            ends_or_starts = starts if event["ph"] == "s" else ends
            assert "id" in event and event["id"] not in ends_or_starts, f"one {event['ph']} per flow id: {event}"
            ends_or_starts[event["id"]] = event
    for slices in trace.slices.values():
        slices.sort(key=lambda e: e["ts"])
    everything = sorted((e for slices in trace.slices.values() for e in slices), key=lambda e: e["ts"])
    for before, after in itertools.pairwise(everything):
        assert before["ts"] + before["dur"] <= after["ts"] + 1e-3, f"two steps at once: {before} {after}"
    assert set(trace.slices) <= set(trace.tracks), "every track with slices is named"
    assert starts.keys() == ends.keys(), "every flow has its start and its end"
    for flow, start in starts.items():
        end = ends[flow]
        assert any(s["ts"] <= start["ts"] <= s["ts"] + s["dur"] for s in trace.slices.get(start["tid"], [])), (
            f"a flow's start lies in a step of its track: {start}"
        )
        assert any(s["ts"] >= end["ts"] for s in trace.slices.get(end["tid"], [])), (
            f"a flow's end has a step after it on its track: {end}"
        )
        trace.arrows.append((start["tid"], end["tid"], start["name"]))
    return trace


def test_yieldio_trace_file_draws_a_track_per_task_a_slice_per_step_and_who_woke_whom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trace.json"
    monkeypatch.setenv("YIELDIO_TRACE_FILE", str(path))
    queue: yieldio.Queue[str] = yieldio.Queue()

    async def producer() -> None:
        await yieldio.sleep(0.01)
        await queue.put("item")  # wakes the consumer, parked in get()
        await yieldio.sleep(0.01)

    async def consumer() -> str:
        task = await yieldio.spawn(producer())
        item = await queue.get()
        await task.join()  # parks until the producer has ended, which wakes it
        return item

    assert yieldio.run(consumer) == "item"
    trace = check_chrome_trace(path)
    main, child = trace.track(r"#\d+ consumer"), trace.track(r"#\d+ .*producer")
    assert [s["name"] for s in trace.slices[child]] == ["sleep 0.01s", "sleep 0.01s", "return"]
    assert [s["name"] for s in trace.slices[main]] == ["spawn", "park", f"join #{child}", "return"]
    assert (main, child, "spawn") in trace.arrows
    assert (child, main, "woken") in trace.arrows  # the item handed over
    assert (child, main, f"task {child} ended") in trace.arrows
    names = {e["name"] for e in trace.events if e["ph"] == "i" and e["tid"] == child}
    assert "timer" in names  # nothing ran to wake it: an instant


def test_serve_trace_file_names_connection_tracks_with_their_peers_and_arrows_from_the_accept_loop(
    tmp_path: Path, serve_process: ProcessServers
) -> None:
    path = tmp_path / "serve-trace.json"
    server = serve_process("--trace-file", str(path))
    peers = []
    for message in (b"one\n", b"two\n"):
        with connect(server.address) as client:
            host, port = client.getsockname()[:2]
            peers.append(f"{host}:{port}")
            client.sendall(message)
            assert recv_exactly(client, 4 + len(message)) == b"GOT:" + message
    server.wait_log(b"connection closed", count=2)
    assert server.stop(signal.SIGTERM) == 0
    trace = check_chrome_trace(path)
    listener = trace.track(r"#\d+ listener 127\.0\.0\.1:\d+")
    for peer in peers:
        # the connection's tasks (a server may hand a connection from one task to the next), each spawned by
        # the one before, the first by the accept loop
        tasks = trace.tracks_like(rf"#\d+ echo_handler {re.escape(peer)}")
        for spawner, spawned in zip([listener, *tasks], tasks, strict=False):
            assert (spawner, spawned, "spawn") in trace.arrows
        assert any(re.fullmatch(r"recv fd \d+", s["name"]) for task in tasks for s in trace.slices[task])
        assert trace.slices[tasks[-1]][-1]["name"] == "return"


def test_a_trace_file_that_cannot_be_written_is_one_line_before_anything_listens(tmp_path: Path) -> None:
    done = run_serve("--trace-file", str(tmp_path / "missing" / "t.json"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"yieldio: cannot write the trace file {tmp_path / 'missing' / 't.json'}: No such file or directory"
    ]
