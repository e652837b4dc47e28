"""deploy/kubernetes/load-job.yaml: the Job that runs ``yieldio load`` in three pods, checked without a cluster.

As tests/test_deploy.py does for the echo server's manifests (and with its helpers): the validators
the file is written for (kubernetes-validate in strict mode, yamllint) run over it as it is; then it
is read as data and held to what it promises. Its pods are as locked down as the echo's; its command
is ``yieldio load`` with flags the real command has; it loads a Service that reaches one version of
the echo, and checks the replies with that version's framing and prefix; each pod writes its report
to a file of its own on a claim that all three can mount.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from .harness import python_env, yieldio_command
from .test_deploy import (
    CONTAINERFILE,
    DEPLOY,
    KUBERNETES_VERSION,
    container,
    container_env,
    deployments,
    manifests,
    parse_containerfile,
    quantity,
    run_tool,
    the,
    tool,
)

LOAD_JOB = DEPLOY / "kubernetes" / "load-job.yaml"
SECURITY = ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")  # the pod's, in the Deployments
CONTAINER_SECURITY = ("allowPrivilegeEscalation", "readOnlyRootFilesystem", "privileged", "capabilities")


def documents() -> list[dict[str, Any]]:
    return manifests(LOAD_JOB)


def job() -> dict[str, Any]:
    (only,) = the("Job", documents())
    return only


def pod_spec() -> dict[str, Any]:
    spec = job()["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def load_container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    assert isinstance(only, dict)
    return only


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments as a dict (the manifest writes every flag so: one list item each)."""
    found = {}
    for arg in args[1:]:
        name, equals, value = arg.partition("=")
        assert arg.startswith("--") and equals, f"{arg!r}: write flags as --name=value"
        found[name] = value
    return found


# --- the tools the file is written for ---------------------------------------------------------


def test_kubernetes_validate_strict_passes_the_load_job() -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate==1.37.0")
    result = run_tool(validate, "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(LOAD_JOB))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.findall(r"^INFO .* passed for resource (\S+)", output, re.MULTILINE)
    assert sorted(passed) == ["job/yieldio-load", "persistentvolumeclaim/yieldio-load-results", "service/tcp-echo-v1"]
    assert "WARN" not in output and "ERROR" not in output, output


def test_yamllint_strict_passes_the_load_job() -> None:
    yamllint = tool("yamllint", "pip install yamllint==1.38.0")
    result = run_tool(yamllint, "--strict", "-c", str(DEPLOY / ".yamllint"), str(LOAD_JOB))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- what the file promises --------------------------------------------------------------------


def test_three_pods_at_once_each_run_once() -> None:
    spec = job()["spec"]
    assert (spec["parallelism"], spec["completions"]) == (3, 3)
    assert pod_spec()["restartPolicy"] == "Never"
    # a failed load is a result, not something to retry: no second report of the same index
    assert spec.get("completionMode") == "Indexed" and spec.get("backoffLimitPerIndex") == 0
    args = flags(load_container()["args"])
    run = float(args.get("--warmup", "1")) + float(args["--duration"])
    assert spec["activeDeadlineSeconds"] > run + 30, "room to be scheduled and to write the report"
    # an Istio sidecar would outlive the load, and the pod would never complete
    assert job()["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"


def test_pods_are_locked_down_as_the_echo_deployments() -> None:
    echo = deployments()["v1"]
    echo_pod = echo["spec"]["template"]["spec"]
    pod = pod_spec()
    for key in SECURITY:
        assert pod["securityContext"].get(key) == echo_pod["securityContext"][key], key
    for key in CONTAINER_SECURITY:
        assert load_container()["securityContext"].get(key) == container(echo)["securityContext"][key], key
    assert pod.get("automountServiceAccountToken") is False
    assert pod.get("enableServiceLinks") is False
    assert pod.get("hostNetwork") in (None, False)
    assert load_container()["image"] == container(echo)["image"]


def test_requests_and_limits_are_set_and_consistent() -> None:
    resources = load_container()["resources"]
    for resource in ("cpu", "memory"):
        request, limit = resources["requests"][resource], resources["limits"][resource]
        assert 0 < quantity(request) <= quantity(limit), f"{resource}: {request} > {limit}"


def test_the_command_is_yieldio_load_with_flags_it_has() -> None:
    spec = load_container()
    assert spec["command"] == ["yieldio", "load"], "the image's ENTRYPOINT is yieldio serve: command replaces it"
    args = spec["args"]
    assert re.fullmatch(r"tcp://[a-z0-9-]+:\d+", args[0]), args[0]
    given = flags(args)
    shown = subprocess.run(
        yieldio_command("load", "--help"), env=python_env(), capture_output=True, text=True, timeout=30, check=False
    )
    assert shown.returncode == 0, shown.stderr
    for name in given:
        assert re.search(rf"(^|[\s,\[]){re.escape(name)}\b", shown.stdout), f"yieldio load has no {name}"


def test_it_loads_one_version_with_that_versions_framing_and_prefix() -> None:
    args = load_container()["args"]
    target = re.fullmatch(r"tcp://([a-z0-9-]+):(\d+)", args[0])
    assert target, args[0]
    host, port = target.groups()
    services = {s["metadata"]["name"]: s for s in the("Service", documents() + manifests())}
    assert host in services, f"{host} is no Service of load-job.yaml or tcp-echo.yaml"
    service = services[host]
    (item,) = [p for p in service["spec"]["ports"] if p["port"] == int(port) and p["protocol"] == "TCP"]
    # the Service must reach one Deployment only: two prefixes would make half the replies mismatches
    selector = service["spec"]["selector"].items()
    reached = [d for d in deployments().values() if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
    assert len(reached) == 1, f"{host} selects {len(reached)} Deployments"
    (deployment,) = reached
    named = {p["name"]: p for p in container(deployment)["ports"]}
    assert named[item["targetPort"]]["protocol"] == "TCP"
    env = container_env(deployment)
    given = flags(args)
    assert given["--prefix"] == env["YIELDIO_PREFIX"]
    assert given.get("--framing", "chunk") == env["YIELDIO_FRAMING"]


def test_each_pod_writes_its_own_report_to_a_claim_all_can_mount() -> None:
    spec = load_container()
    given = flags(spec["args"])
    assert given["--json"] == "/results/$(POD_NAME).json"
    (pod_name,) = [item for item in spec["env"] if item["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # unique per pod
    (mount,) = [m for m in spec["volumeMounts"] if m["mountPath"] == "/results"]
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    (claim,) = the("PersistentVolumeClaim", documents())
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "three pods, maybe on three nodes"
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) > 0
    # uid 10001 must be able to write on the claim, whoever owns its root
    assert pod_spec()["securityContext"].get("fsGroup") == pod_spec()["securityContext"]["runAsGroup"]


def test_the_image_has_the_load_extra() -> None:
    # `yieldio load` needs yieldio[load] (hdrhistogram, rich); the Job runs the echo server's image
    build = parse_containerfile(CONTAINERFILE.read_text())[0]
    extras = set()
    for command in build.all("RUN"):
        for found in re.findall(r"\.\[([a-z,]+)\]", command):
            extras.update(found.split(","))
    assert "load" in extras, f"deploy/Containerfile builds the wheels with extras {sorted(extras)}, not load"
