"""``yieldio report FILE...``: saved ``yieldio load --json`` results merged into one report.

Runs made at the same time (a Kubernetes Job's pods, several machines) each save their
results; their counts add and their histograms add exactly (each file carries its own, in
HdrHistogram's encoded form), so the merged percentiles are those of every request of every
run, never an average of percentiles. Requests per second add up too: the runs are taken to
have run side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .results import MissingExtra, Results, text_report


def add_parser(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="merge saved `yieldio load --json` results into one report",
        description="Merge the JSON results of `yieldio load --json FILE` runs made side by side (a Job's pods, "
        "several machines) into one report: counts add, latency histograms add exactly.",
    )
    report.add_argument("files", metavar="FILE", nargs="+", help="a result saved by yieldio load --json")
    report.add_argument("--json", metavar="FILE", help="write the merged result as JSON ('-': stdout, and only it)")
    report.add_argument("--verbose", action="store_true", help="also the clients' CPU time per request")
    report.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    merged: Results | None = None
    try:
        for path in args.files:
            results = _read(path)
            if merged is None:
                merged = results
            else:
                merged.merge(results)
    except (_Unreadable, MissingExtra) as error:
        print(f"yieldio report: {error}", file=sys.stderr)
        return 2
    assert merged is not None
    merged.setup["runs"] = len(args.files)
    rps = merged.to_json()["rps"]
    human = sys.stderr if args.json == "-" else sys.stdout
    if args.json is not None:
        text = json.dumps(merged.to_json() | {"rps": rps}, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as stream:
                stream.write(text + "\n")
    print(text_report(merged, verbose=args.verbose), file=human)
    return 0


class _Unreadable(Exception):
    pass


def _read(path: str) -> Results:
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
        return Results.from_json(data)
    except OSError as error:
        raise _Unreadable(f"cannot read {path}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise _Unreadable(f"{path} is not a result of yieldio load --json ({error})") from None
