"""A load's results: counts and a latency histogram, merged exactly, reported as text or JSON.

``yieldio load`` (one process or several workers) and ``yieldio report`` (saved results of
several runs, e.g. a Kubernetes Job's pods) build the same :class:`Results`. Latencies live
in an HdrHistogram (the ``hdrhistogram`` package, from the ``yieldio[load]`` extra):
microseconds from 1 µs to an hour at 3 significant digits; histograms of several processes
or machines add exactly, and travel as HdrHistogram's compressed base64 form
(``HISTFAAA...``), which HdrHistogram's own tools in every language read. Percentiles are
never averaged.
"""

from __future__ import annotations

import importlib
import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..clients.load import Tally

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # an hour
DIGITS = 3
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99))
EXTRA = "yieldio[load]"


class MissingExtra(Exception):
    """A library of the optional extra is not installed: one line naming it."""


def require(module: str) -> Any:
    """Import ``module`` of the ``yieldio[load]`` extra, or say in one line how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{module} is not installed: pip install '{EXTRA}'") from None


def new_histogram() -> HdrHistogram:
    histogram_module = require("hdrh.histogram")
    histogram: HdrHistogram = histogram_module.HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)
    return histogram


def record_all(histogram: HdrHistogram, latencies: array[int]) -> None:
    """Add raw latencies (µs): each distinct value once, with its count. The histogram's own
    per-value call costs a microsecond or two in Python; latencies cluster, so counting them
    first (in C) makes this cheap."""
    for value, count in Counter(latencies).items():
        histogram.record_value(min(max(value, 0), HIGHEST_US), count)


def decode(encoded: str) -> HdrHistogram:
    histogram_module = require("hdrh.histogram")
    decoded: HdrHistogram = histogram_module.HdrHistogram.decode(encoded)
    return decoded


COUNTS = (
    "requests",
    "sent",
    "bytes_out",
    "bytes_in",
    "lost",
    "duplicated",
    "reordered",
    "late",
    "behind",
    "connections_opened",
    "connections_lost",
)


@dataclass
class Counts:
    """The counters of :class:`~yieldio.clients.load.Tally`, as plain data that adds up."""

    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, tally: Tally) -> Counts:
        return cls({name: getattr(tally, name) for name in COUNTS}, Counter(tally.errors), list(tally.examples))

    def add(self, other: Counts) -> None:
        for name in COUNTS:
            self.values[name] += other.values.get(name, 0)
        self.errors.update(other.errors)
        self.examples.extend(other.examples[: max(0, 5 - len(self.examples))])

    def to_json(self) -> dict[str, Any]:
        return {"values": self.values, "errors": dict(self.errors), "examples": self.examples}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counts:
        values = dict.fromkeys(COUNTS, 0) | {k: int(v) for k, v in data.get("values", {}).items()}
        return cls(values, Counter({k: int(v) for k, v in data.get("errors", {}).items()}), list(data["examples"]))


@dataclass
class Results:
    """Everything a report says: the counts, the histogram, and how the run was made."""

    counts: Counts
    histogram: HdrHistogram
    elapsed: float  # seconds measured (the warm-up left out)
    setup: dict[str, Any]  # url, connections, size, mode, rate asked...
    cpu_seconds: float = 0.0  # the client's own, all its processes

    @property
    def errors(self) -> int:
        return sum(self.counts.errors.values())

    def latency_us(self) -> dict[str, int]:
        h = self.histogram
        if h.get_total_count() == 0:
            return {name: 0 for name, _ in PERCENTILES} | {"min": 0, "max": 0, "mean": 0}
        latency = {name: int(h.get_value_at_percentile(p)) for name, p in PERCENTILES}
        latency |= {"min": int(h.get_min_value()), "max": int(h.get_max_value()), "mean": round(h.get_mean_value())}
        return latency

    def to_json(self) -> dict[str, Any]:
        values = self.counts.values
        elapsed = self.elapsed or 1e-9
        report: dict[str, Any] = dict(self.setup)
        report |= {
            "elapsed_s": round(self.elapsed, 6),
            "requests": values["requests"],
            "sent": values["sent"] or values["requests"],  # (streams count their sends as requests)
            "errors": self.errors,
            "errors_by_kind": dict(self.counts.errors),
            "mismatches": self.counts.errors.get("mismatch", 0),
            "lost": values["lost"],
            "duplicated": values["duplicated"],
            "reordered": values["reordered"],
            "late": values["late"],
            "rps": round(values["requests"] / elapsed, 1),
            "bytes_out": values["bytes_out"],
            "bytes_in": values["bytes_in"],
            "bytes_per_s": round((values["bytes_out"] + values["bytes_in"]) / elapsed, 1),
            "sent_late": values["behind"],
            "connections_opened": values["connections_opened"],
            "connections_lost": values["connections_lost"],
            "latency_us": self.latency_us(),
            "examples": self.counts.examples,
            "client_cpu_s": round(self.cpu_seconds, 4),
            "histogram": self.histogram.encode().decode("ascii"),
            "counts": self.counts.to_json(),
        }
        return report

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        setup_keys = ("url", "connections", "size", "mode", "rate_asked", "framing", "prefix", "workers")
        return cls(
            Counts.from_json(data["counts"]),
            decode(data["histogram"]),
            float(data["elapsed_s"]),
            {k: data[k] for k in setup_keys if k in data},
            float(data.get("client_cpu_s", 0.0)),
        )

    def merge(self, other: Results) -> None:
        """Add a run made at the same time (another worker, another pod): counts and histograms add,
        the elapsed time is the longer of the two."""
        self.counts.add(other.counts)
        self.histogram.add(other.histogram)
        self.elapsed = max(self.elapsed, other.elapsed)
        self.cpu_seconds += other.cpu_seconds

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def human_duration(us: float) -> str:
    if us >= 1_000_000:
        return f"{us / 1_000_000:.2f} s"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} µs"


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1024
    return f"{count:.1f} GiB"


def text_report(results: Results, verbose: bool = False) -> str:
    """The final report, as a person reads it."""
    report = results.to_json()
    setup = results.setup
    heading = (
        f"yieldio load {setup.get('url', '?')}: {setup.get('connections', '?')} connections, "
        f"{setup.get('size', '?')}-byte messages, {setup.get('mode', '?')} loop, {results.elapsed:.2f} s measured"
    )
    lines = [heading]
    rate = f"{report['rps']:,.1f}/s"
    if setup.get("rate_asked"):
        rate += f" (asked for {setup['rate_asked']:,.1f}/s)"
    lines.append(f"  requests   {report['requests']:,} ({rate})")
    lines.append(
        f"  bytes      {human_bytes(report['bytes_out'])} out, {human_bytes(report['bytes_in'])} in "
        f"({human_bytes(report['bytes_per_s'])}/s)"
    )
    latency = report["latency_us"]
    shown = "  ".join(
        f"{label} {human_duration(latency[key])}"
        for label, key in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"), ("p99.99", "p9999"))
    )
    lines.append(f"  latency    {shown}  max {human_duration(latency['max'])}")
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(report["errors_by_kind"].items()))
    lines.append(f"  errors     {report['errors']:,}" + (f" ({kinds})" if kinds else ""))
    if setup.get("url", "").startswith("udp:"):
        lines.append(
            f"  datagrams  {report['sent']:,} sent, lost {report['lost']:,}, duplicated {report['duplicated']:,}, "
            f"reordered {report['reordered']:,}, late {report['late']:,}"
        )
    if report["connections_lost"]:
        lines.append(f"  connections lost  {report['connections_lost']:,}")
    lines.extend(f"  first faults: {example}" for example in report["examples"])
    if verbose and report["requests"]:
        per_request = results.cpu_seconds / report["requests"] * 1e6
        lines.append(f"  client CPU {results.cpu_seconds:.2f} s, {per_request:.2f} µs per request")
    return "\n".join(lines)
