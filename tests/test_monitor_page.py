"""The monitor's page in a real browser: headless Chromium (Debian's), driven by Selenium.

What a person sees: the ready queue and the waiting areas appear and change as ``nc`` clients
come and go; a click shows a task's stack and cancels it; step mode steps the tutorial's own
server one task at a time; sleepers count down; a blocked scheduler is shown as such; and a page
of another name or origin gets nothing. Each test keeps screenshots: under a pytest temporary
directory, or in ``YIELDIO_SCREENSHOTS`` if it is set (CI prints where they are).

Chromium runs with what it needs as root in a container (--no-sandbox, --disable-dev-shm-usage),
a fresh profile, and nothing that would reach outside (no background networking, no component
updates, no sync). The driver is Debian's /usr/bin/chromedriver: nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from .conftest import in_ci
from .harness import (
    ROOT,
    ChildProcess,
    Netcat,
    ProcessServers,
    ServerProcess,
    connect,
    http_request,
    monitor_address,
    recv_exactly,
)
from .test_cli import TUTORIAL_ON_A_FREE_PORT

pytestmark = pytest.mark.flagship  # under CI, a machine without the browser fails these instead of skipping them

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0  # seconds any one thing may take to show on the page


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> Callable[[WebDriver, str], Path]:
    """``shoot(browser, name)``: a PNG of the page, kept as the test's artifact: in ``YIELDIO_SCREENSHOTS``,
    or under CI in the temporary directory's ``yieldio-screenshots`` (its path printed, past pytest's
    capture), else in the test's own temporary directory."""
    kept = os.environ.get("YIELDIO_SCREENSHOTS") or (
        os.path.join(tempfile.gettempdir(), "yieldio-screenshots") if in_ci() else ""
    )
    directory = Path(kept) if kept else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)

    def shoot(driver: WebDriver, name: str) -> Path:
        path = directory / f"{request.node.name}-{name}.png"
        assert driver.save_screenshot(str(path)), path
        if kept:
            with capsys.disabled():
                print(f"\n[screenshot] {path}")
        return path

    return shoot


def until(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """Wait (bounded) until ``condition`` holds on the page; what it returned."""
    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(condition, message=f"not on the page: {what}")


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def shows(element_id: str, *pieces: str) -> Callable[[WebDriver], bool]:
    return lambda driver: all(piece in text_of(driver, element_id) for piece in pieces)


def lacks(element_id: str, piece: str) -> Callable[[WebDriver], bool]:
    return lambda driver: piece not in text_of(driver, element_id)


def row_of(driver: WebDriver, peer: str) -> Any:
    """The task table's row of the connection task with this peer."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#task-table tbody tr")
    return next(row for row in rows if peer in row.text and "echo_handler" in row.text)


def open_page(driver: WebDriver, monitor: tuple[str, int]) -> None:
    driver.get(f"http://{monitor[0]}:{monitor[1]}/")
    until(driver, shows("status", "live"), "the page connected")


def test_the_ready_queue_and_waiting_areas_change_as_nc_clients_come_and_go(
    browser: WebDriver,
    serve_process: ProcessServers,
    netcats: list[Netcat],
    screenshots: Callable[[WebDriver, str], Path],
) -> None:
    server = serve_process("--monitor", "127.0.0.1:0")
    open_page(browser, monitor_address(server))
    until(browser, shows("recv-wait", "listener 127.0.0.1:"), "the accept loop in recv_wait")
    assert "empty" in text_of(browser, "send-wait")

    first, second = Netcat(server.address), Netcat(server.address)
    netcats += [first, second]
    first.say(b"one\n", b"GOT:one\n")
    second.say(b"two\n", b"GOT:two\n")
    peers = [first.local_address(), second.local_address()]
    until(browser, shows("recv-wait", *peers), "both connections in recv_wait, with their peers")
    until(browser, lambda d: all(row_of(d, peer) for peer in peers), "both in the task table")
    fd = re.search(rf"fd (\d+)\s*#\d+ echo_handler\s*{re.escape(peers[0])}", text_of(browser, "recv-wait"))
    assert fd is not None, text_of(browser, "recv-wait")  # keyed by descriptor, as the tutorial's recv_wait
    assert f"waiting to read fd {fd.group(1)}" in row_of(browser, peers[0]).text
    until(browser, shows("trace", "echo_handler", "yielded ('recv', fd"), "the scheduling events")
    screenshots(browser, "two-clients")

    first.close()
    netcats.remove(first)
    until(browser, lacks("recv-wait", peers[0]), "the first client gone from recv_wait")
    assert peers[1] in text_of(browser, "recv-wait")
    screenshots(browser, "one-left")


def test_a_click_shows_a_tasks_stack_and_cancel_closes_exactly_that_connection(
    browser: WebDriver,
    serve_process: ProcessServers,
    netcats: list[Netcat],
    screenshots: Callable[[WebDriver, str], Path],
) -> None:
    server = serve_process("--monitor", "127.0.0.1:0")
    for line in (b"doomed\n", b"bystander\n"):
        client = Netcat(server.address)
        netcats.append(client)
        client.say(line, b"GOT:" + line)
    doomed, bystander = netcats
    open_page(browser, monitor_address(server))
    # the first render (the one that made the page live) already shows each connection's peer
    assert doomed.local_address() in text_of(browser, "recv-wait")
    assert bystander.local_address() in text_of(browser, "recv-wait")
    until(browser, lambda d: row_of(d, doomed.local_address()), "the connection in the task table").click()
    until(browser, shows("detail-title", "echo_handler", doomed.local_address()), "the task's detail")
    until(browser, shows("stack", "servers/echo.py"), "its stack, down to the echo loop")
    assert "waiting to read fd" in text_of(browser, "detail-state")
    screenshots(browser, "stack")

    browser.find_element(By.ID, "cancel").click()
    until(browser, shows("detail-note", "Cancelled"), "the cancel's answer")
    doomed.wait_closed_by_server()
    until(browser, lacks("recv-wait", doomed.local_address()), "the cancelled connection gone")
    bystander.say(b"still served\n", b"GOT:still served\n")
    assert bystander.local_address() in text_of(browser, "recv-wait")
    server.wait_log(f"connection closed {doomed.local_address()}".encode())
    screenshots(browser, "cancelled")


def test_step_mode_steps_the_tutorials_server_one_task_at_a_time(
    browser: WebDriver, programs: list[ChildProcess], screenshots: Callable[[WebDriver, str], Path]
) -> None:
    tutorial = ServerProcess(
        [sys.executable, "-c", TUTORIAL_ON_A_FREE_PORT, str(ROOT / "examples" / "tutorial_server.py")],
        env={"YIELDIO_MONITOR": "127.0.0.1:0"},
    )
    programs.append(tutorial)
    monitor = monitor_address(tutorial)
    with connect(("127.0.0.1", tutorial.wait_listening())) as client:
        peer = "{}:{}".format(*client.getsockname()[:2])
        open_page(browser, monitor)
        until(browser, shows("recv-wait", "echo_handler", peer), "the handler in recv_wait")
        task_id = re.search(rf"#(\d+) echo_handler\s*{re.escape(peer)}", text_of(browser, "recv-wait"))
        assert task_id is not None
        handler = f"task {task_id.group(1)} echo_handler"

        browser.find_element(By.ID, "pause").click()
        until(browser, shows("status", "paused"), "step mode")
        client.sendall(b"one step at a time\n")
        until(browser, shows("ready", f"#{task_id.group(1)} echo_handler"), "the handler woken into tasks")
        until(browser, shows("next", f"next: #{task_id.group(1)} echo_handler"), "what a step would run")
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(100)  # woken, but held: it has not run
        screenshots(browser, "woken-and-held")

        browser.find_element(By.ID, "step").click()
        until(browser, shows("step-report", f"Step 1: {handler} ran, yielded ('send', fd"), "the first step")
        assert "went to send_wait[fd" in text_of(browser, "step-report")
        with pytest.raises(BlockingIOError):
            client.recv(100)  # it read the line and now waits to send
        until(browser, shows("ready", f"#{task_id.group(1)} echo_handler"), "writable: back in tasks")
        screenshots(browser, "step-1")

        until(browser, lambda d: d.find_element(By.ID, "step").is_enabled(), "the step button back")
        browser.find_element(By.ID, "step").click()
        until(browser, shows("step-report", f"Step 2: {handler} ran, yielded ('recv', fd"), "the second step")
        assert "went to recv_wait[fd" in text_of(browser, "step-report")
        client.settimeout(10)
        assert recv_exactly(client, 23) == b"GOT:one step at a time\n"
        until(browser, shows("recv-wait", peer), "the handler back in recv_wait")
        screenshots(browser, "step-2")

        browser.find_element(By.ID, "resume").click()
        until(browser, shows("status", "live"), "running freely again")
        client.setblocking(True)
        client.sendall(b"free\n")
        assert recv_exactly(client, 9) == b"GOT:free\n"


# Two sleepers and, after a while, a task that blocks the scheduler for 3 s.
SLEEPS_THEN_BLOCKS = """
import time
import yieldio

async def napper(seconds):
    await yieldio.sleep(seconds)

async def hog():
    await yieldio.sleep(1.5)
    time.sleep(3)  # never yields

async def main():
    await yieldio.spawn(napper(30), name="long nap")
    await yieldio.spawn(napper(20), name="short nap")
    await yieldio.spawn(hog(), name="hog")
    await yieldio.sleep(60)

yieldio.run(main)
"""


def test_sleepers_count_down_soonest_first_and_a_blocked_scheduler_is_shown_with_the_culprits_stack(
    browser: WebDriver,
    programs: list[ChildProcess],
    tmp_path: Path,
    screenshots: Callable[[WebDriver, str], Path],
) -> None:
    source = tmp_path / "sleeps_then_blocks.py"
    source.write_text(SLEEPS_THEN_BLOCKS)
    program = ChildProcess([sys.executable, str(source)], env={"YIELDIO_MONITOR": "127.0.0.1:0"})
    programs.append(program)
    open_page(browser, monitor_address(program))
    until(browser, shows("sleeping", "short nap", "long nap"), "the sleepers")
    sleeping = text_of(browser, "sleeping")
    assert sleeping.index("short nap") < sleeping.index("long nap")  # soonest first
    first = until(browser, lambda d: re.search(r"short nap\s+in (\d+\.\d) s", text_of(d, "sleeping")), "a countdown")
    until(
        browser,
        lambda d: (
            (m := re.search(r"short nap\s+in (\d+\.\d) s", text_of(d, "sleeping"))) and m.group(1) != first.group(1)
        ),
        "the countdown moving",
    )
    screenshots(browser, "sleepers")

    until(browser, lambda d: d.find_element(By.ID, "blocked").is_displayed(), "the blocked scheduler")
    until(browser, shows("blocked-text", "hog has held the scheduler for"), "which task")
    assert "time.sleep(3)" in text_of(browser, "blocked-stack")
    assert "blocked" in text_of(browser, "status")
    screenshots(browser, "blocked")
    until(browser, lambda d: not d.find_element(By.ID, "blocked").is_displayed(), "the block over")


class _ForeignPage(BaseHTTPRequestHandler):
    """A page of another origin that tries to pause the monitor (its address in the query)."""

    timeout = 10  # a connection the browser opens ahead and never uses must not hold a thread for ever

    def do_GET(self) -> None:
        monitor = self.path.partition("?")[2]
        body = f"""<!doctype html><title>foreign</title><script>
fetch("http://{monitor}/api/pause", {{method: "POST", mode: "no-cors"}})
  .then(() => {{ document.title = "answered"; }}, () => {{ document.title = "unreachable"; }});
</script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_page_of_another_name_or_origin_gets_nothing(
    browser: WebDriver, serve_process: ProcessServers, screenshots: Callable[[WebDriver, str], Path]
) -> None:
    server = serve_process("--monitor", "127.0.0.1:0")
    monitor = monitor_address(server)
    # DNS rebinding: a name of the attacker's that resolves to the monitor's address (Chromium resolves
    # every *.localhost name to loopback by itself) sends that name in Host
    browser.get(f"http://rebound.localhost:{monitor[1]}/")
    until(browser, lambda d: "refused (DNS rebinding)" in d.page_source, "the refusal")
    screenshots(browser, "rebound-host")

    foreign = ThreadingHTTPServer(("127.0.0.1", 0), _ForeignPage)
    foreign.daemon_threads = True
    thread = threading.Thread(target=foreign.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{foreign.server_address[1]}/?127.0.0.1:{monitor[1]}")
        until(browser, lambda d: d.title in ("answered", "unreachable"), "the foreign page's request")
        assert browser.title == "answered"  # the monitor answered it...
        status, state = http_request(monitor, "GET", "/api/state", {"Host": f"127.0.0.1:{monitor[1]}"})
        assert status == 200 and not state["stepping"]  # ...with a refusal: nothing was paused
    finally:
        foreign.shutdown()
        foreign.server_close()
        thread.join(10)
