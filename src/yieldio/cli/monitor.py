"""``yieldio ps``, ``where``, ``cancel`` and ``top``: a running program's monitor, from the command line.

The program is one started with ``yieldio serve --monitor`` or with
``YIELDIO_MONITOR`` set (any program ``yieldio.run`` runs). Each command asks
its monitor over HTTP (:class:`~yieldio.observe.monitor_web.MonitorClient`):

- ``ps [ADDR]``: every task, its state in the tutorial's words (ready, waiting
  to read fd N, sleeping until, joined on), its steps and run time, and a
  connection's peer. When a task has held the scheduler longer than
  ``--blocked-after``, that comes first: which task, since when, its stack now;
- ``where [ADDR] ID``: a task's stack, file and line, through ``await`` and
  ``yield from``, down to where it waits;
- ``cancel [ADDR] ID``: cancel it (``Cancelled`` is thrown where it waits);
- ``top [ADDR]``: ``ps``, refreshed (needs rich: ``yieldio[monitor]``).

ADDR is always HOST:PORT, with its colon (``:PORT`` is 127.0.0.1); left out,
it is ``YIELDIO_MONITOR``'s, or 127.0.0.1:48802. A lone number is a task id.
A token (``--token``, ``YIELDIO_MONITOR_TOKEN``) is sent when given. No
monitor there, an unknown id, a refusal: one line on stderr, exit status 1;
a usage error: exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from ..observe.monitor import BLOCKED_AFTER, Json, wall_clock
from ..observe.monitor_address import DEFAULT_ADDRESS, BadAddress, parse_command_address, parse_monitor_address
from .flags import FromEnvironment, bounded

if TYPE_CHECKING:
    from ..observe.monitor_web import MonitorClient

EXTRA = "yieldio[monitor]"
COMMANDS = {
    "ps": ("list a running program's tasks: state, steps, run time, peer", "[ADDR]"),
    "where": ("show where a task waits: its stack, through await and yield from", "[ADDR] ID"),
    "cancel": ("cancel a task of a running program", "[ADDR] ID"),
    "top": ("ps, refreshed until Ctrl-C (needs yieldio[monitor])", "[ADDR]"),
}


def add_parsers(commands: Any) -> dict[str, FromEnvironment]:
    """``ps``, ``where``, ``cancel``, ``top``; each one's flags that a variable may set, by name."""
    environments = {}
    for name, (summary, words) in COMMANDS.items():
        command = commands.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. ADDR is HOST:PORT, with its colon (:PORT is 127.0.0.1); "
            f"without it, YIELDIO_MONITOR's address or {DEFAULT_ADDRESS[0]}:{DEFAULT_ADDRESS[1]}. "
            "The program runs with `yieldio serve --monitor` or YIELDIO_MONITOR set.",
        )
        what = "the monitor's address (HOST:PORT)" + (", then the task's id" if "ID" in words else "")
        command.add_argument("words", nargs="*", metavar=words, help=what)
        env = FromEnvironment()
        env.add(command, "--token", "YIELDIO_MONITOR_TOKEN", None, help="the monitor's token, if it has one")
        env.add(
            command,
            "--blocked-after",
            "YIELDIO_BLOCKED_AFTER",
            BLOCKED_AFTER,
            type=bounded(float, "--blocked-after", 0.01, 60),
            metavar="SECONDS",
            help="a task that has held the scheduler this long is blocking it: said first",
        )
        if name == "top":
            env.add(
                command,
                "--interval",
                "YIELDIO_TOP_INTERVAL",
                1.0,
                type=bounded(float, "--interval", 0.1, 3600),
                metavar="SECONDS",
                help="between two refreshes",
            )
        command.set_defaults(func=run_command, resolve=resolve_words)
        environments[name] = env
    return environments


def resolve_words(parser: argparse.ArgumentParser, args: argparse.Namespace, environ: dict[str, str]) -> None:
    """``args.address`` and ``args.task_id`` from the words: [ADDR] for ps and top, [ADDR] ID for where and cancel."""
    words: list[str] = args.words
    wants_id = args.command in ("where", "cancel")
    usage = f"{args.command} {COMMANDS[args.command][1]}"
    if wants_id:
        if not 1 <= len(words) <= 2 or not words[-1].isdigit():
            parser.error(f"usage: yieldio {usage}: ID is a task's number, as ps shows it")
        args.task_id = int(words[-1])
        words = words[:-1]
    elif len(words) > 1 or (words and ":" not in words[0]):
        what = "a lone number is a task id, and " if words and words[0].isdigit() else ""
        parser.error(f"usage: yieldio {usage}: {what}ADDR is HOST:PORT, with a colon")
    try:
        if words:
            args.address = parse_command_address(words[0])
        elif environ.get("YIELDIO_MONITOR", "").strip():
            args.address = parse_monitor_address(environ["YIELDIO_MONITOR"])
        else:
            args.address = DEFAULT_ADDRESS
    except BadAddress as error:
        parser.error(str(error))


def run_command(args: argparse.Namespace) -> int:
    # the HTTP client, imported here: `yieldio serve` declares these commands too, and needs none of it
    from ..observe.monitor_web import MonitorClient, MonitorUnavailable

    client = MonitorClient(args.address, args.token)
    try:
        if args.command == "ps":
            print(ps_text(client.state(args.blocked_after), client.where))
        elif args.command == "where":
            print(where_text(client.task(args.task_id, args.blocked_after)))
        elif args.command == "cancel":
            print(cancel_text(client.cancel(args.task_id)))
        else:
            return top(client, args.blocked_after, args.interval)
    except MonitorUnavailable as error:
        print(f"yieldio {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


# -- what the commands print ------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.2f}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _stack_lines(stack: list[Json]) -> list[str]:
    lines = []
    for frame in stack:
        lines.append(f'  File "{frame["file"]}", line {frame["line"]}, in {frame["function"]}')
        if frame["code"]:
            lines.append(f"    {frame['code']}")
    return lines or ["  (no Python frame)"]


def _who(task: Json) -> str:
    return f"task {task['id']} {task['name']}" + (f" {task['peer']}" if task.get("peer") else "")


def header_lines(state: Json, where: str) -> list[str]:
    """Who answers (pid, worker, program), and first of all a task that blocks the scheduler."""
    worker = f", worker {state['worker']}" if state.get("worker") else ""
    lines = [f"{where}: pid {state['pid']}{worker}, {state['program']}"]
    if state.get("workers"):
        others = [address for address in state["workers"] if address != state.get("monitor")]
        lines.append(f"the other workers' monitors: {', '.join(others)}")
    blocked = state.get("blocked")
    if blocked:
        lines.append(
            f"BLOCKED: {_who(blocked)} has held the scheduler for {blocked['seconds']:.2f}s "
            f"(since {wall_clock(blocked['since'])}); its stack now:"
        )
        lines.extend(_stack_lines(blocked["stack"]))
    if state.get("note"):
        lines.append(f"({state['note']})")
    if state.get("stepping"):
        lines.append("(paused: step mode, from the monitor's page)")
    return lines


def task_rows(state: Json) -> list[list[str]]:
    rows = [["id", "name", "state", "steps", "run time", "age", "peer"]]
    for task in state["tasks"]:
        steps = "" if task["steps"] is None else str(task["steps"])
        age = f"{task['age']:.1f}s"
        rows.append(
            [str(task["id"]), task["name"], task["state"], steps, _seconds(task["run_time"]), age, task["peer"] or ""]
        )
    return rows


def ps_text(state: Json, where: str) -> str:
    return "\n".join([*header_lines(state, where), _table(task_rows(state))])


def where_text(detail: Json) -> str:
    task = detail["task"]
    lines = [f"{_who(task)}: {task['state']}", *_stack_lines(detail["stack"])]
    if not detail["consistent"]:
        lines.append("(read from the monitor's thread: the scheduler is busy)")
    return "\n".join(lines)


def cancel_text(answer: Json) -> str:
    who = _who(answer["task"])
    if answer["queued"]:
        return f"cancel of {who} queued: the scheduler is busy; it is cancelled once the running task yields"
    if not answer["cancelled"]:
        return f"{who} had already ended"
    return f"cancelled {who}"


def top(client: MonitorClient, blocked_after: float, interval: float) -> int:
    """``ps`` in a table rich keeps redrawn, until Ctrl-C."""
    from ..observe.monitor_web import MonitorUnavailable

    try:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        raise MonitorUnavailable(f"rich is not installed: pip install '{EXTRA}'") from None

    def view(state: Json) -> Group:
        header = [
            Text(line, style="bold red" if line.startswith("BLOCKED") else "")
            for line in header_lines(state, client.where)
        ]
        rows = task_rows(state)
        table = Table(*rows[0], box=None, header_style="bold")
        for row in rows[1:]:
            table.add_row(*row)
        counts = state["counts"]
        summary = (
            f"{counts['tasks']} tasks: {counts['ready']} in tasks (ready), {counts['recv_wait']} in recv_wait, "
            f"{counts['send_wait']} in send_wait, {counts['sleeping']} sleeping  ·  {time.strftime('%H:%M:%S')}"
        )
        return Group(*header, Text(summary, style="dim"), table)

    console = Console()
    try:
        with Live(view(client.state(blocked_after)), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(view(client.state(blocked_after)), refresh=True)
    except KeyboardInterrupt:
        return 0
