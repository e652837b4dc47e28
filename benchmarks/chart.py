#!/usr/bin/env python3
"""Draw the echo benchmark results (run.py's JSON) as a PNG.

Left: grouped bars of requests/s per scenario, one bar per server, on a log
scale because the scenarios differ by orders of magnitude (100 KiB messages
vs 1 KiB).  Right, when the run had it: server RSS with 10,000 idle
connections (of the idle scenarios, the one with the most connections).
The footer carries the date, CPU model and versions so that a chart
copied somewhere else still says what it measured.

    benchmarks/.venv/bin/python benchmarks/chart.py [results/latest.json] [-o results/echo.png]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HIGHLIGHT = "yieldio"
# One hue per family, light/dark for variants, so related bars read as related.
PALETTE = {
    "yieldio": "#1f4e9c",
    "yieldio-info": "#7fa3dd",
    "tutorial": "#9c9c2a",
    "asyncio-streams": "#8fd18f",
    "asyncio-proto": "#2e8b2e",
    "uvloop-streams": "#ffbb78",
    "uvloop-proto": "#e6750a",
    "trio": "#9467bd",
    "curio": "#8c564b",
    "gevent": "#e377c2",
    "threads": "#a0a0a0",
    "c-epoll": "#303030",
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def footer(meta: dict[str, Any]) -> str:
    v = meta.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("yieldio", "uvloop", "trio", "curio", "gevent") if k in v)
    if "yieldio_commit" in v:
        libs = libs.replace(f"yieldio {v['yieldio']}", f"yieldio {v['yieldio']} ({v['yieldio_commit']})")
    return (
        f"{meta.get('date', '?')} · {meta.get('cpu_model', '?')} · kernel {meta.get('kernel', '?')} · "
        f"Python {meta.get('python', '?')} · {libs} · gcc {v.get('gcc', '?')}\n"
        f"server on CPU {meta.get('server_cpu')}, C load generator on CPU {meta.get('loadgen_cpu')}, "
        f"closed loop, median of {meta.get('repeat')} × {meta.get('duration_s')} s "
        f"(after {meta.get('warmup_s')} s warm-up); hatched = generator-limited; "
        f"✗ = no result (server died, failed or answered nothing)"
    )


def draw(doc: dict[str, Any], out: Path) -> None:
    matplotlib.use("Agg")  # headless: no display on benchmark machines
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [r for r in doc["summary"]]
    idle = {n: s for n, s in doc["meta"].get("scenarios", {}).items() if s.get("idle")}
    load_rows = [r for r in rows if r["scenario"] not in idle]
    # one idle scenario in the panel, the one with the most connections (idle5k's figures are in latest.md)
    largest = max(idle, key=lambda name: idle[name].get("conns", 0), default=None)
    idle_rows = [r for r in rows if r["scenario"] == largest and r.get("rss_mib")]
    scenarios = list(dict.fromkeys(r["scenario"] for r in load_rows))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    by = {(r["server"], r["scenario"]): r for r in rows}
    colors = {s: PALETTE.get(s, plt.cm.tab10(i % 10)) for i, s in enumerate(servers)}

    ncols = 2 if idle_rows else 1
    fig, axes = plt.subplots(
        1,
        ncols,
        figsize=(15 if idle_rows else 12, 6.5),
        gridspec_kw={"width_ratios": [3, 1]} if idle_rows else None,
        squeeze=False,
    )
    ax = axes[0][0]
    width = 0.8 / max(1, len(servers))
    for i, server in enumerate(servers):
        xs, ys, hatches = [], [], []
        for j, sc in enumerate(scenarios):
            r = by.get((server, sc))
            if r and r.get("requests_per_s"):
                xs.append(j + (i - (len(servers) - 1) / 2) * width)
                ys.append(r["requests_per_s"])
                hatches.append("//" if r.get("generator_limited") else "")
        bars = ax.bar(
            xs,
            ys,
            width,
            label=server,
            color=colors[server],
            edgecolor="black" if server == HIGHLIGHT else "none",
            linewidth=1.2,
        )
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
        for j, sc in enumerate(scenarios):  # mark servers that failed instead of leaving a gap
            r = by.get((server, sc))
            if r and not r.get("requests_per_s"):
                ax.annotate(
                    "✗",
                    (j + (i - (len(servers) - 1) / 2) * width, 0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    color=colors[server],
                    fontsize=9,
                    fontweight="bold",
                )
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_yscale("log")
    values = [r["requests_per_s"] for r in load_rows if r.get("requests_per_s")]
    if values:  # a round floor so bar heights are comparable on the log axis
        floor = 10 ** math.floor(math.log10(min(values) / 2))
        ax.set_ylim(bottom=floor, top=max(values) * 4)  # headroom for the legend
    ax.set_ylabel("requests/s (log scale, higher is better)")
    ax.set_title("TCP echo: requests per second")
    ax.grid(axis="y", which="both", alpha=0.3)
    handles = [
        Patch(facecolor=colors[s], edgecolor="black" if s == HIGHLIGHT else "none", label=s)
        for s in servers
        if any(by.get((s, sc), {}).get("requests_per_s") for sc in scenarios)
    ]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="generator-limited"))
    ax.legend(handles=handles, ncol=min(6, len(handles)), fontsize=8, loc="upper center", frameon=False)

    if idle_rows:
        ax2 = axes[0][1]
        names = [r["server"] for r in idle_rows]
        vals = [r["rss_mib"] for r in idle_rows]
        ax2.barh(
            names,
            vals,
            color=[colors[n] for n in names],
            edgecolor=["black" if n == HIGHLIGHT else "none" for n in names],
        )
        ax2.invert_yaxis()
        ax2.set_xlabel("server RSS, MiB (lower is better)")
        ax2.set_title(f"RSS with {int(idle_rows[0].get('idle_ready') or 0):,} idle connections")
        for y, v in enumerate(vals):
            ax2.text(v, y, f" {v:.0f}", va="center", fontsize=8)
        ax2.grid(axis="x", alpha=0.3)

    fig.text(0.01, 0.01, footer(doc["meta"]), fontsize=7, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="?", type=Path, default=RESULTS_DIR / "latest.json")
    p.add_argument("-o", "--output", type=Path, default=RESULTS_DIR / "echo.png")
    args = p.parse_args(argv)
    draw(load(args.json), args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
