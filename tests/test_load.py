"""End to end: ``yieldio load``, the load generator, as a real process against real servers.

Every run is ``python -m yieldio load URL ... --json -`` (stdout then holds that one JSON document,
which the tests parse) bounded to a few seconds: ``-n N`` runs, or ``-d`` runs with ``--warmup 0``.
The servers it loads are ``yieldio serve`` on each transport (TCP, TLS with a trustme CA, UDP, Unix),
servers no one here wrote (socat as an RFC 862 echo, HAProxy in front of ``yieldio serve
--proxy-protocol``), and the misbehaving servers of tests/load_servers.py, whose faults are exact
(tests/test_load_servers.py pins them down), so the counts expected here are exact too:

- ``corrupt`` flips one byte of replies number 1000, 2000, ... counted over the whole server, so
  ``-n 3000`` sees exactly 3 mismatches, whatever the connection they fall on and whether the load
  generator reconnects after one: a reconnection adds no reply to the server's count, and even a
  mismatched request sent again (or a few probes) leaves the count between 3000 and 3999;
- ``udp-drop`` drops every 10th datagram it receives, so any 1000 datagrams in a row lose exactly
  100, whatever probes came before them;
- ``stall`` stops answering for 1 s once: at a fixed rate (open loop) the p90 shows it, in a closed
  loop it does not (each connection waits once): coordinated omission, corrected;
- a server killed by its PID mid-run, and SIGINT to the load process, still give a report.

The report's fields, the exit statuses (0 clean, 1 mismatch/loss/threshold/server lost, 2 usage or
unreachable target before any load, 130 on SIGINT) and ``yieldio report``'s exact merge of saved
histograms are the command's interface; HdrHistogram's own Python package decodes the histograms.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest
import trustme
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped,unused-ignore]
from hdrh.log import HistogramLogReader  # type: ignore[import-untyped,unused-ignore]

from yieldio.compiled import RequestChain as CompiledRequestChain

from .harness import (
    SRC,
    ChildProcess,
    ProcessServers,
    ServerProcess,
    python_env,
    refused_port,
    serve_command,
    yieldio_command,
)
from .test_haproxy import HAPROXY, haproxy_config
from .test_load_servers import load_server_command

RUN_TIMEOUT = 40.0  # the longest a single `yieldio load` may take here (pytest-timeout is 60 s a test)
LATENCY_KEYS = ("p50", "p90", "p99", "p999", "p9999", "max")
UDP_ONLY = ("lost", "duplicated", "reordered", "late")
INTERVAL = re.compile(rb'^\{".*\}\r?\n', re.MULTILINE)  # one --json-lines object
SOCAT_LISTENING = re.compile(rb"listening on AF=2 127\.0\.0\.1:(\d+)")  # socat -d -d, once it listens
SOCAT_UNIX_LISTENING = re.compile(rb'listening on AF=1 "([^"]+)"')
PROXIED = re.compile(rb"connection from (\S+) via (\S+)\n")


# -- running yieldio load ------------------------------------------------------------------


@dataclass
class Load:
    """A finished ``yieldio load`` (or ``yieldio report``) run."""

    command: Sequence[str | bytes]
    returncode: int
    stdout: bytes
    stderr: bytes

    def describe(self) -> str:
        words = " ".join(os.fsdecode(word) for word in self.command[3:])
        return (
            f"`yieldio {words}` exited {self.returncode}\n--- stderr:\n{self.stderr.decode(errors='replace')[-3000:]}"
            f"\n--- stdout:\n{self.stdout.decode(errors='replace')[-3000:]}"
        )

    def report(self) -> dict[str, Any]:
        """The JSON document that ``--json -`` makes stdout (and nothing else)."""
        try:
            report = json.loads(self.stdout)
        except ValueError as error:
            raise AssertionError(f"stdout is not one JSON document ({error}):\n{self.describe()}") from None
        assert isinstance(report, dict), self.describe()
        return report

    def one_line_error(self) -> str:
        """For a run refused before any load: exit 2 and one line on stderr, no traceback."""
        text = self.stderr.decode(errors="replace")
        assert self.returncode == 2, self.describe()
        assert "Traceback" not in text, self.describe()
        lines = text.strip().splitlines()
        assert len(lines) == 1 and lines[0].strip(), self.describe()
        assert "invalid choice: 'load'" not in lines[0], "there is no yieldio load command (yet)"
        return lines[0]


def run_yieldio(
    *args: str, timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Load:
    command = yieldio_command(*args)
    try:
        done = subprocess.run(
            command,
            env=env or python_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as expired:  # subprocess.run has killed it, by its PID
        raise AssertionError(f"`yieldio {' '.join(args)}` still running after {timeout}s: {expired.stderr!r}") from None
    return Load(command, done.returncode, done.stdout, done.stderr)


def run_load(url: str, *args: str, timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None) -> Load:
    """``yieldio load URL ARGS --json -``: its exit status, and stdout as the report."""
    return run_yieldio("load", url, *args, "--json", "-", timeout=timeout, env=env)


def histogram_of(report: dict[str, Any]) -> HdrHistogram:
    encoded = report["histogram"]
    assert isinstance(encoded, str) and encoded.startswith("HISTFAAA"), encoded[:40]
    return HdrHistogram.decode(encoded)


def check_latencies(report: dict[str, Any]) -> None:
    """latency_us holds every percentile, in order, and they are the histogram's own (in microseconds)."""
    latency = report["latency_us"]
    assert set(LATENCY_KEYS) <= set(latency), latency
    values = [latency[key] for key in LATENCY_KEYS]
    assert values[0] > 0 and values == sorted(values), latency
    histogram = histogram_of(report)
    for key, percentile in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
        expected = histogram.get_value_at_percentile(percentile)
        assert abs(latency[key] - expected) <= max(2, 0.01 * expected), (key, latency[key], expected)
    assert abs(latency["max"] - histogram.get_max_value()) <= max(2, 0.01 * latency["max"]), latency


def assert_clean(load: Load, requests: int) -> dict[str, Any]:
    """Every reply matched: exit 0, exactly ``requests`` round trips, no error of any kind."""
    report = load.report()
    assert load.returncode == 0, load.describe()
    assert report["requests"] == requests, load.describe()
    assert (report["errors"], report["mismatches"], report["connections_lost"]) == (0, 0, 0), load.describe()
    assert sum(report["errors_by_kind"].values()) == 0, report["errors_by_kind"]
    assert {key: report[key] for key in UDP_ONLY} == dict.fromkeys(UDP_ONLY, 0), load.describe()
    assert histogram_of(report).get_total_count() == requests
    assert report["rps"] > 0
    check_latencies(report)
    return report


# -- the servers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A trustme CA and a certificate for ``localhost`` only: a client asking for 127.0.0.1 must say --server-name."""
    where = tmp_path_factory.mktemp("load-certs")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    paths = Certs(where / "ca.pem", where / "cert.pem", where / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca))
    paths.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(paths.key))
    return paths


def serve(serve_process: ProcessServers, listen: str, *args: str) -> tuple[ServerProcess, str]:
    """``yieldio serve --listen LISTEN ARGS``: the server, and the URL ``yieldio load`` takes for it."""
    server = serve_process.launch(serve_command("--listen", listen, *args))
    (label,) = server.wait_listeners(1)
    url = label if "://" in label or label.startswith("unix:") else f"tcp://{label}"  # TCP's label has no scheme
    if not url.startswith("unix:"):
        server.port = int(url.rpartition(":")[2])
    return server, url


def start_transport(serve_process: ProcessServers, kind: str, certs: Certs, sock_dir: Path) -> tuple[str, list[str]]:
    """A ``yieldio serve`` listener of ``kind``: its URL and the flags ``yieldio load`` needs for it."""
    if kind == "tls":
        _, url = serve(serve_process, "tls://127.0.0.1:0", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
        return url, ["--tls-ca", str(certs.ca), "--server-name", "localhost"]
    listen = f"unix:{sock_dir / 'echo.sock'}" if kind == "unix" else f"{kind}://127.0.0.1:0"
    return serve(serve_process, listen)[1], []


def start_load_server(serve_process: ProcessServers, kind: str, *args: str) -> tuple[ServerProcess, str]:
    server = serve_process.start(load_server_command(kind, *args))
    scheme = "udp" if kind.startswith("udp") else "tcp"
    return server, f"{scheme}://127.0.0.1:{server.port}"


# -- every transport against yieldio serve ------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "tls", "udp", "unix"])
def test_exact_counts_on_every_transport(
    serve_process: ProcessServers, certs: Certs, sock_dir: Path, kind: str
) -> None:
    url, flags = start_transport(serve_process, kind, certs, sock_dir)
    report = assert_clean(run_load(url, "-n", "1000", "-c", "10", *flags), 1000)
    assert report["mode"] == "closed"
    for server in serve_process.started:
        server.assert_healthy()


@pytest.mark.parametrize("pure", ["1", "0"], ids=["pure", "compiled"])
@pytest.mark.parametrize("extra", [[], ["--churn", "7"], ["--rate", "2000"]], ids=["closed", "churn", "open"])
def test_the_pure_and_the_compiled_client_loops_count_alike(
    serve_process: ProcessServers, pure: str, extra: list[str]
) -> None:
    # the chain takes a -n ticket for each request it sends itself, and gives it back when the send
    # fails: the totals must still be exact, with churn (a connection's last request is not followed)
    # and in open loop (where the chain sends nothing)
    if pure == "0" and CompiledRequestChain is None:
        pytest.skip("the compiled chain is not in use (a pure build, or YIELDIO_PURE=1)")
    _, url = serve(serve_process, "tcp://127.0.0.1:0")
    load = run_load(url, "-n", "999", "-c", "10", "--verbose", *extra, env={**os.environ, "YIELDIO_PURE": pure})
    assert_clean(load, 999)
    assert f"client loop: {'pure' if pure == '1' else 'compiled'}".encode() in load.stderr, load.describe()


def test_line_framing_with_another_prefix_as_istios_tcp_echo(serve_process: ProcessServers) -> None:
    # the configuration of deploy/kubernetes/tcp-echo.yaml (and of load-job.yaml against it)
    server, url = serve(serve_process, "tcp://127.0.0.1:0", "--framing", "line", "--prefix", "one ")
    assert_clean(run_load(url, "-n", "500", "-c", "5", "-s", "100", "--framing", "line", "--prefix", "one "), 500)
    server.assert_healthy()


def test_a_prefix_the_server_does_not_send_is_a_mismatch(serve_process: ProcessServers) -> None:
    server, url = serve(serve_process, "tcp://127.0.0.1:0")  # answers GOT:
    load = run_load(url, "-n", "50", "-c", "2", "--prefix", "NOT:")
    report = load.report()
    assert load.returncode == 1, load.describe()
    assert report["mismatches"] > 0 and report["errors_by_kind"].get("mismatch", 0) > 0, load.describe()
    server.assert_healthy()


def test_tls_without_verification_on_request(serve_process: ProcessServers, certs: Certs, sock_dir: Path) -> None:
    url, _ = start_transport(serve_process, "tls", certs, sock_dir)
    assert_clean(run_load(url, "-n", "200", "-c", "4", "--insecure"), 200)


def test_open_loop_keeps_the_rate(serve_process: ProcessServers) -> None:
    _, url = serve(serve_process, "tcp://127.0.0.1:0")
    load = run_load(url, "--rate", "400", "-d", "2", "--warmup", "0", "-c", "4")
    report = load.report()
    assert load.returncode == 0, load.describe()
    assert report["mode"] == "open"
    assert 700 <= report["requests"] <= 840, load.describe()  # 400/s for 2 s
    assert 340 <= report["rps"] <= 460, load.describe()
    assert histogram_of(report).get_total_count() == report["requests"]
    check_latencies(report)


def test_churn_reconnects_every_n_requests(serve_process: ProcessServers) -> None:
    server, url = serve(serve_process, "tcp://127.0.0.1:0")
    assert_clean(run_load(url, "-n", "1000", "-c", "5", "--churn", "10"), 1000)
    # 1000 requests, 10 to a connection: at least 100 connections (more if probes open their own)
    assert server.count(b"connection from") >= 100, server.tail()
    server.assert_healthy()


def test_thresholds_decide_the_exit_status(serve_process: ProcessServers) -> None:
    _, url = serve(serve_process, "tcp://127.0.0.1:0")
    broken = run_load(url, "-n", "300", "-c", "3", "--p99-max", "1us")  # no round trip takes 1 µs
    assert (broken.returncode, broken.report()["requests"], broken.report()["errors"]) == (1, 300, 0), broken.describe()
    held = run_load(url, "-n", "300", "-c", "3", "--p99-max", "5s")
    assert_clean(held, 300)


def test_json_lines_and_the_hdr_log_add_up_to_the_report(serve_process: ProcessServers, tmp_path: Path) -> None:
    _, url = serve(serve_process, "tcp://127.0.0.1:0")
    hdr_log = tmp_path / "latency.hlog"
    json_lines = tmp_path / "intervals.jsonl"
    load = run_load(
        url, "-d", "2.5", "--warmup", "0", "-c", "4", "--hdr-log", str(hdr_log), "--json-lines", str(json_lines)
    )
    report = load.report()
    assert load.returncode == 0, load.describe()
    assert report["requests"] > 0 and report["errors"] == 0
    intervals = [json.loads(line) for line in json_lines.read_text().splitlines() if line.strip()]
    assert len(intervals) >= 2 and all(isinstance(interval, dict) for interval in intervals), intervals
    # HdrHistogram's own log reader: the intervals' histograms add up to the run's
    reader = HistogramLogReader(str(hdr_log), HdrHistogram(1, 3_600_000_000, 3))
    logged = 0
    while (interval := reader.get_next_interval_histogram()) is not None:
        logged += interval.get_total_count()
    reader.close()
    assert logged == report["requests"], (logged, report["requests"], hdr_log.read_text()[:500])


# -- servers no one here wrote -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_socat_as_an_rfc862_echo(serve_process: ProcessServers, sock_dir: Path, kind: str) -> None:
    # socat -d -d says where it listens, the port the system picked included; PIPE echoes what it reads
    if kind == "tcp":
        address, listening = "TCP-LISTEN:0,bind=127.0.0.1,reuseaddr,fork", SOCAT_LISTENING
    else:
        address, listening = f"UNIX-LISTEN:{sock_dir / 'socat.sock'},fork", SOCAT_UNIX_LISTENING
    socat = serve_process.launch(["socat", "-d", "-d", address, "PIPE"])
    where = socat.wait_log(listening).group(1).decode()
    url = f"tcp://127.0.0.1:{where}" if kind == "tcp" else f"unix:{where}"
    assert_clean(run_load(url, "-n", "1000", "-c", "10", "--prefix", ""), 1000)
    assert socat.alive(), socat.tail()


@pytest.fixture
def haproxy(serve_process: ProcessServers, tmp_path: Path) -> Callable[[str, str], tuple[ServerProcess, str]]:
    """``haproxy(server, options)``: HAProxy in TCP mode in front of ``server``; its process and frontend URL.

    As tests/test_haproxy.py does: the test binds the frontend on port 0 and HAProxy inherits it (fd@N)."""
    assert HAPROXY, "haproxy is not installed (.ci/run installs Debian's haproxy)"

    def start(server: str, options: str) -> tuple[ServerProcess, str]:
        with socket.socket() as frontend:
            frontend.bind(("127.0.0.1", 0))
            frontend.listen(64)
            config = tmp_path / "haproxy.cfg"
            config.write_text(haproxy_config(frontend.fileno(), server, options, ()))
            process = serve_process.launch([HAPROXY, "-db", "-f", str(config)], pass_fds=[frontend.fileno()])
            return process, f"tcp://127.0.0.1:{frontend.getsockname()[1]}"

    return start


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_through_haproxy_to_yieldio_serve_proxy_protocol(
    serve_process: ProcessServers, haproxy: Callable[[str, str], tuple[ServerProcess, str]], send_proxy: str
) -> None:
    server, _ = serve(serve_process, "tcp://127.0.0.1:0", "--proxy-protocol")
    balancer, url = haproxy(f"127.0.0.1:{server.port}", send_proxy)
    assert_clean(run_load(url, "-n", "1000", "-c", "10"), 1000)
    server.wait_log(PROXIED, count=10)  # each connection came through HAProxy, named by its header
    assert b"rejected" not in server.output(), server.tail()
    server.assert_healthy()
    assert balancer.alive() and b"[ALERT]" not in balancer.output(), balancer.tail()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_load_sends_the_proxy_header_itself(serve_process: ProcessServers, version: str) -> None:
    server, url = serve(serve_process, "tcp://127.0.0.1:0", "--proxy-protocol")
    load = run_load(url, "-n", "500", "-c", "5", "--proxy-protocol", version, "--proxy-source", "203.0.113.7:4000")
    assert_clean(load, 500)
    server.wait_log(re.compile(rb"connection from 203\.0\.113\.7:\d+ via 127\.0\.0\.1:\d+\n"), count=5)
    assert b"rejected" not in server.output(), server.tail()
    server.assert_healthy()


def test_proxy_header_with_the_connections_own_addresses(serve_process: ProcessServers) -> None:
    server, url = serve(serve_process, "tcp://127.0.0.1:0", "--proxy-protocol")
    assert_clean(run_load(url, "-n", "200", "-c", "2", "--proxy-protocol", "v2"), 200)
    server.wait_log(PROXIED, count=2)
    assert b"rejected" not in server.output(), server.tail()


# -- the misbehaving servers ----------------------------------------------------------------


def test_every_thousandth_reply_corrupted_gives_exactly_three_mismatches_in_3000(
    serve_process: ProcessServers,
) -> None:
    server, url = start_load_server(serve_process, "corrupt")
    load = run_load(url, "-n", "3000", "-c", "10")
    report = load.report()
    assert load.returncode == 1, load.describe()
    assert report["mismatches"] == 3, load.describe()
    assert report["errors_by_kind"].get("mismatch") == 3, report["errors_by_kind"]
    assert report["errors"] >= 3, report
    # -n counts the requests made (3 of which mismatched) or the ones that matched: either way no more
    assert report["requests"] in (2997, 3000), load.describe()
    assert report["connections_lost"] == 0, load.describe()
    assert server.alive(), server.tail()


def test_open_loop_after_a_wrong_echo_keeps_its_schedule(serve_process: ProcessServers) -> None:
    # a connection that saw a wrong echo is opened again and takes up its schedule where it left off:
    # not from the start of the run (every request after it would be late, and timed from then)
    server, url = start_load_server(serve_process, "corrupt", "--every", "100")
    load = run_load(url, "--rate", "400", "-d", "2", "--warmup", "0", "-c", "4")
    report = load.report()
    assert load.returncode == 1, load.describe()
    assert 5 <= report["mismatches"] <= 9, load.describe()  # about 800 replies, every 100th wrong
    assert report["sent_late"] <= 10, load.describe()
    assert report["latency_us"]["max"] < 200_000, load.describe()
    assert server.alive(), server.tail()


def test_open_loop_latency_shows_the_stall_that_the_closed_loop_hides(serve_process: ProcessServers) -> None:
    # One server each (the stall comes once): 250 replies in (half a second at 500/s), it answers nothing
    # for 1 s. At --rate 500 the 500 requests due during the stall are late by up to 1 s, a third of
    # the run's 1500: the p90 is well over 200 ms. Closed-loop, each of the 10 connections waits once:
    # the max shows the stall, the p90 does not.
    stalls: dict[str, dict[str, Any]] = {}
    for mode, flags in (("open", ["--rate", "500"]), ("closed", [])):
        server, url = start_load_server(serve_process, "stall", "--stall-after", "250", "--stall", "1.0")
        load = run_load(url, "-d", "3", "--warmup", "0", "-c", "10", *flags)
        report = load.report()
        assert load.returncode == 0, load.describe()
        assert (report["mode"], report["errors"], report["mismatches"]) == (mode, 0, 0), load.describe()
        server.wait_log(re.compile(rb"resumed after [0-9.]+ s"))  # the stall did happen, during the run
        stalls[mode] = report["latency_us"]
    assert stalls["open"]["p90"] >= 200_000, stalls
    assert stalls["closed"]["p90"] < 50_000, stalls
    assert stalls["closed"]["max"] >= 900_000, stalls  # the stall is there, seen once per connection


def test_echoes_that_never_come_back_fail_the_run_unless_allowed(serve_process: ProcessServers) -> None:
    # A request whose echo times out did not match either: by default (--error-max 0) that fails the
    # run; --error-max lets a known number through. The server stalls 1 s after 50 replies; the
    # timeout is 0.6 s (seen within a quarter of it), so each of the 5 connections times out once, and
    # its next request, on a new connection, is answered when the stall ends, before its own timeout.
    for allowed, status in ((None, 1), ("5", 0)):
        server, url = start_load_server(serve_process, "stall", "--stall-after", "50", "--stall", "1.0")
        flags = ["--error-max", allowed] if allowed else []
        load = run_load(url, "-n", "400", "-c", "5", "--timeout", "0.6", *flags)
        report = load.report()
        server.wait_log(re.compile(rb"resumed after [0-9.]+ s"))
        assert report["errors_by_kind"] == {"timeout": 5}, load.describe()
        assert report["mismatches"] == 0 and report["requests"] == 395, load.describe()
        assert load.returncode == status, load.describe()


def test_udp_loss_counted_exactly(serve_process: ProcessServers) -> None:
    # one connection, one datagram at a time; a dropped one costs its --timeout, so keep that short
    server, url = start_load_server(serve_process, "udp-drop")
    load = run_load(url, "-n", "1000", "-c", "1", "--timeout", "0.1")
    report = load.report()
    assert load.returncode == 1, load.describe()  # --max-loss is 0 by default
    assert (report["lost"], report["requests"], report["mismatches"]) == (100, 900, 0), load.describe()
    assert (report["duplicated"], report["late"]) == (0, 0), load.describe()
    assert histogram_of(report).get_total_count() == 900
    # the same server (any 200 datagrams in a row lose 20), with room for a loss of 10 %
    allowed = run_load(url, "-n", "200", "-c", "1", "--timeout", "0.1", "--max-loss", "0.11")
    assert (allowed.returncode, allowed.report()["lost"], allowed.report()["requests"]) == (0, 20, 180), (
        allowed.describe()
    )
    assert server.alive()


def test_udp_duplicates_counted(serve_process: ProcessServers) -> None:
    _, url = start_load_server(serve_process, "udp-dup")
    load = run_load(url, "-n", "1000", "-c", "1")
    report = load.report()
    assert (report["requests"], report["lost"], report["mismatches"]) == (1000, 0, 0), load.describe()
    # every 10th answered twice; the last copy of all may come after the run has stopped listening
    assert report["duplicated"] in (99, 100), load.describe()


def test_udp_reordering_counted_in_an_open_loop(serve_process: ProcessServers) -> None:
    # at 1000/s the next datagram comes 1 ms after each 10th, whose reply is held until then (0.2 s at
    # most). Small datagrams: the client's receive buffer holds a few hundred of them, so a client held
    # up for a moment on a busy machine loses none of the replies meanwhile.
    _, url = start_load_server(serve_process, "udp-reorder", "--hold", "0.2")
    load = run_load(url, "-n", "1000", "-c", "1", "--rate", "1000", "-s", "64")
    report = load.report()
    assert (report["requests"], report["lost"], report["mismatches"]) == (1000, 0, 0), load.describe()
    assert 90 <= report["reordered"] <= 200, load.describe()


# -- workers, and yieldio report --------------------------------------------------------------


def test_two_workers_histograms_merge_exactly_and_report_merges_runs(
    serve_process: ProcessServers, tmp_path: Path
) -> None:
    _, url = serve(serve_process, "tcp://127.0.0.1:0")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    first = run_yieldio("load", url, "-n", "2000", "-c", "10", "--workers", "2", "--json", str(a))
    assert first.returncode == 0, first.describe()
    second = run_yieldio("load", url, "-n", "1000", "-c", "4", "--json", str(b))
    assert second.returncode == 0, second.describe()
    ran_a, ran_b = json.loads(a.read_text()), json.loads(b.read_text())
    assert (ran_a["requests"], ran_b["requests"]) == (2000, 1000)
    assert histogram_of(ran_a).get_total_count() == 2000  # both workers' histograms, added
    check_latencies(ran_a)

    alone = run_yieldio("report", str(a), "--json", "-")
    assert alone.returncode == 0, alone.describe()
    assert alone.report()["requests"] == 2000
    assert histogram_of(alone.report()).get_total_count() == 2000
    assert alone.report()["latency_us"]["max"] == ran_a["latency_us"]["max"]

    merged = run_yieldio("report", str(a), str(b), "--json", "-")
    assert merged.returncode == 0, merged.describe()
    report = merged.report()
    assert (report["requests"], report["errors"], report["mismatches"]) == (3000, 0, 0), merged.describe()
    histogram = histogram_of(report)
    assert histogram.get_total_count() == 3000
    assert report["latency_us"]["max"] == max(ran_a["latency_us"]["max"], ran_b["latency_us"]["max"])
    added = histogram_of(ran_a)
    added.add(histogram_of(ran_b))
    for percentile in (50.0, 90.0, 99.0, 99.9, 100.0):  # exactly the sum of the two
        assert histogram.get_value_at_percentile(percentile) == added.get_value_at_percentile(percentile)
    check_latencies(report)

    printed = run_yieldio("report", str(a), str(b))  # the human report
    assert printed.returncode == 0 and printed.stdout.strip(), printed.describe()


# -- refused before any load: exit 2, one line ----------------------------------------------


def test_unreachable_port() -> None:
    with refused_port() as port:
        load = run_load(f"tcp://127.0.0.1:{port}", "-n", "10")
    load.one_line_error()


def test_unix_socket_that_is_not_there(sock_dir: Path) -> None:
    run_load(f"unix:{sock_dir / 'nobody.sock'}", "-n", "10").one_line_error()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:80", "tcp://127.0.0.1", "tcp://127.0.0.1:port", "tcp://127.0.0.1:70000", "unix:"],
    ids=["scheme", "no-port", "port-not-a-number", "port-too-big", "unix-no-path"],
)
def test_bad_url(url: str) -> None:
    run_load(url, "-n", "10").one_line_error()


@pytest.mark.parametrize(
    "flags",
    [
        ["-c", "0"],
        ["--framing", "word"],
        ["--proxy-protocol", "v3"],
        ["--p99-max", "soon"],
        ["--max-loss", "2"],
        ["--bogus"],
    ],
    ids=["no-connections", "framing", "proxy-version", "p99-duration", "loss-fraction", "unknown-flag"],
)
def test_bad_flags(serve_process: ProcessServers, flags: list[str]) -> None:
    _, url = serve(serve_process, "tcp://127.0.0.1:0")
    run_load(url, "-n", "10", *flags).one_line_error()


@pytest.mark.parametrize("flags", [[], ["--tls-ca", "CA"]], ids=["system-trust", "wrong-name"])
def test_tls_verification_failure(
    serve_process: ProcessServers, certs: Certs, sock_dir: Path, flags: list[str]
) -> None:
    # the system's CAs do not know the trustme CA; with it, the certificate is for localhost, not 127.0.0.1
    url, _ = start_transport(serve_process, "tls", certs, sock_dir)
    line = run_load(url, "-n", "10", *[str(certs.ca) if flag == "CA" else flag for flag in flags]).one_line_error()
    assert "certif" in line.lower() or "verif" in line.lower(), line


def test_udp_message_too_big_for_a_datagram(serve_process: ProcessServers) -> None:
    _, url = serve(serve_process, "udp://127.0.0.1:0")
    run_load(url, "-n", "10", "-s", "70000").one_line_error()


# -- a run cut short ---------------------------------------------------------------------


@pytest.fixture
def load_process() -> Iterator[Callable[..., ChildProcess]]:
    """``load_process(ARGS)`` starts ``yieldio load ARGS`` and returns at once; killed by its PID at teardown."""
    started: list[ChildProcess] = []

    def start(*args: str) -> ChildProcess:
        started.append(ChildProcess(yieldio_command("load", *args)))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def first_interval(load: ChildProcess) -> dict[str, Any]:
    """Wait for the first --json-lines object on the load's stdout: the load is under way."""
    interval = json.loads(load.wait_log(INTERVAL, timeout=15).group(0))
    assert isinstance(interval, dict), interval
    return interval


def test_a_server_killed_mid_run_still_gives_the_report(
    serve_process: ProcessServers, load_process: Callable[..., ChildProcess], tmp_path: Path
) -> None:
    server, url = serve(serve_process, "tcp://127.0.0.1:0")
    result = tmp_path / "report.json"
    load = load_process(url, "-d", "5", "--warmup", "0", "-c", "10", "--json", str(result), "--json-lines", "-")
    first_interval(load)
    server.kill()  # SIGKILL, by its PID
    status = load.proc.wait(20)
    assert status == 1, load.tail()
    assert "Traceback" not in load.text(), load.tail()
    report = json.loads(result.read_text())
    assert report["connections_lost"] > 0, report
    assert report["requests"] > 0 and report["mismatches"] == 0, report
    assert histogram_of(report).get_total_count() == report["requests"]


def test_sigint_gives_the_report_so_far_and_exit_130(
    serve_process: ProcessServers, load_process: Callable[..., ChildProcess], tmp_path: Path
) -> None:
    server, url = serve(serve_process, "tcp://127.0.0.1:0")
    result = tmp_path / "report.json"
    load = load_process(url, "-d", "30", "--warmup", "0", "-c", "4", "--json", str(result), "--json-lines", "-")
    first_interval(load)
    interrupted = time.monotonic()
    load.proc.send_signal(signal.SIGINT)
    status = load.proc.wait(10)
    assert status == 130, load.tail()
    assert time.monotonic() - interrupted < 5
    assert "Traceback" not in load.text(), load.tail()
    report = json.loads(result.read_text())
    assert report["requests"] > 0 and report["errors"] == 0 and report["mismatches"] == 0, report
    assert histogram_of(report).get_total_count() == report["requests"]
    server.assert_healthy()


# -- without the load extra -------------------------------------------------------------------


HIDDEN = 'raise ModuleNotFoundError("No module named {name!r}", name={name!r})\n'


def without(tmp_path: Path, *missing: str) -> dict[str, str]:
    """An environment in which ``missing`` packages are not there, to every import.

    A package whose __init__ raises ModuleNotFoundError, first on the path, is to an import what a package
    that is not installed is (hdrhistogram's import name is hdrh)."""
    hidden = tmp_path / "hidden"
    for name in missing:
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(HIDDEN.format(name=name))
    env = python_env() | {"PYTHONPATH": os.pathsep.join([str(hidden), str(SRC)])}
    for name in missing:
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=env, capture_output=True, timeout=30, check=False
        )
        assert probe.returncode == 1 and b"ModuleNotFoundError" in probe.stderr, probe.stderr  # the stub works
    return env


def assert_names_the_extra(returncode: int | None, text: str, describe: str) -> None:
    assert returncode not in (0, None), describe
    assert "Traceback" not in text, describe
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "yieldio[load]" in lines[0], describe


@pytest.mark.parametrize("missing", [("hdrh",), ("hdrh", "rich")], ids=["hdrhistogram", "hdrhistogram-and-rich"])
def test_without_hdrhistogram_one_line_names_the_extra(
    serve_process: ProcessServers, tmp_path: Path, missing: tuple[str, ...]
) -> None:
    _, url = serve(serve_process, "tcp://127.0.0.1:0")
    saved = tmp_path / "saved.json"
    assert run_yieldio("load", url, "-n", "10", "--json", str(saved)).returncode == 0  # with everything installed
    env = without(tmp_path, *missing)
    load = run_yieldio("load", url, "-n", "10", env=env)
    assert_names_the_extra(load.returncode, load.stderr.decode(errors="replace"), load.describe())
    report = run_yieldio("report", str(saved), env=env)  # a saved histogram is read with hdrhistogram too
    assert_names_the_extra(report.returncode, report.stderr.decode(errors="replace"), report.describe())


def test_without_rich_a_run_on_a_terminal_says_one_line_naming_the_extra(
    serve_process: ProcessServers, tmp_path: Path
) -> None:
    # rich draws the live table, which only a terminal gets: off a terminal (every other test) it is not needed
    env = without(tmp_path, "rich")
    _, url = serve(serve_process, "tcp://127.0.0.1:0")
    command = yieldio_command("load", url, "-n", "10")
    terminal = pexpect.spawn(os.fsdecode(command[0]), [os.fsdecode(word) for word in command[1:]], env=env, timeout=20)
    try:
        terminal.expect(pexpect.EOF)
        output = terminal.before.decode(errors="replace")
    finally:
        terminal.close(force=True)  # by its PID; reaps it
    assert_names_the_extra(terminal.exitstatus, output, f"exit {terminal.exitstatus}:\n{output}")
