"""
The Kubernetes manifests of docs/kubernetes/, checked offline: they are valid
Kubernetes objects (kubernetes-validate, strict, against the schemas it
bundles, with the network cut off), and they agree with capserv itself: the
container's arguments parse with `capserv.tap.Options`, the probes ask the
port ``--metrics`` names for ``/healthz`` and ``/readyz``, the Service
carries TCP and UDP on the ports ``--listen`` names, and the grace period
covers the whole stop.

Run by ``tox -e docs``, the environment that installs kubernetes-validate
(the test matrix leaves this file out).
"""

from __future__ import annotations

import json
import re
import socket
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from twisted.python import usage

from capserv.daemon.listen import DatagramListener, StreamListener
from capserv.tap import Options

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "docs" / "kubernetes"

#: Kubernetes versions validated against: the newest that kubernetes-validate
#: bundles, and 1.26, the first where a LoadBalancer Service may mix TCP and
#: UDP (MixedProtocolLBService, generally available).
OLDEST = "1.26"

#: Seconds the process gets, past the longest stop capserv can take, to log
#: its totals and exit before the kubelet's SIGKILL.
EXIT_MARGIN = 5


def objects() -> list[dict[str, Any]]:
    """Every object of every manifest in docs/kubernetes/."""
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [item for item in yaml.safe_load_all(path.read_text()) if item]
    return found


def the(kind: str) -> dict[str, Any]:
    """The one object of ``kind`` in the manifests."""
    matching = [item for item in objects() if item["kind"] == kind]
    assert len(matching) == 1, f"{len(matching)} {kind} objects in {MANIFESTS}"
    return matching[0]


def container() -> dict[str, Any]:
    """The Deployment's capserv container."""
    containers = the("Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["capserv"]
    result: dict[str, Any] = containers[0]
    return result


@cache
def options() -> Options:
    """The container's arguments, parsed by capserv's own options."""
    parsed = Options()
    try:
        parsed.parseOptions(container()["args"])
    except usage.UsageError as e:
        pytest.fail(f"the container's args are not capserv's: {e}")
    return parsed


def container_port(reference: int | str, protocol: str = "TCP") -> int:
    """The number a probe's or Service's port refers to (a number, or a
    container port's name)."""
    if isinstance(reference, int):
        return reference
    ports = [p for p in container()["ports"] if p.get("name") == reference]
    assert len(ports) == 1, f"no container port named {reference!r}"
    assert ports[0].get("protocol", "TCP") == protocol, f"{reference!r} is not {protocol}"
    number: int = ports[0]["containerPort"]
    return number


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to look up a name or connect fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the validator tried the network: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.mark.parametrize("version", [kubernetes_validate.latest_version(), OLDEST])
def test_manifests_are_valid_kubernetes_objects(version: str, no_network: None) -> None:
    """
    Every object validates, strictly (an unknown field is an error), against
    the schemas kubernetes-validate bundles, with no network.
    """
    found = objects()
    assert sorted(item["kind"] for item in found) == ["Deployment", "Service"]
    for item in found:
        kubernetes_validate.validate(item, version, strict=True)


def test_the_validator_catches_a_misspelt_field(no_network: None) -> None:
    """
    The validation above can fail: a misspelt field (a readiness probe
    that would never run) is an error.
    """
    deployment = json.loads(json.dumps(the("Deployment")))
    pod = deployment["spec"]["template"]["spec"]["containers"][0]
    pod["readinesProbe"] = pod.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_container_runs_the_containerfile_command() -> None:
    """
    The container's command is the Containerfile's CMD up to ``capserv``
    (the image's twistd, in the foreground, logging JSON lines); its args
    take the place of the CMD's own capserv options.
    """
    text = (ROOT / "Containerfile").read_text()
    match = re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert match is not None
    cmd = json.loads(match.group(1))
    assert container()["command"] == cmd[: cmd.index("capserv") + 1]


def test_container_args_are_capserv_options() -> None:
    """
    The args parse with ``twistd capserv``'s own options: TCP and UDP on
    0.0.0.0, metrics on 0.0.0.0 too (the kubelet probes the pod's address),
    and a drain delay.
    """
    parsed = options()
    listeners = parsed["settings"].listen
    assert [type(listener) for listener in listeners] == [StreamListener, DatagramListener]
    assert {listener.host for listener in listeners} == {"0.0.0.0"}
    assert listeners[0].port == listeners[1].port == 50007
    metrics = parsed["settings"].metrics
    assert isinstance(metrics, StreamListener) and metrics.host == "0.0.0.0"
    assert float(parsed["drain-delay"]) > 0


def test_probes_ask_the_metrics_port_for_health_and_readiness() -> None:
    """
    Liveness asks ``/healthz`` and readiness ``/readyz``, over HTTP, on the
    port ``--metrics`` listens on.
    """
    metrics_port = options()["settings"].metrics.port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container()[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get.get("scheme", "HTTP") == "HTTP", probe
        assert container_port(get["port"]) == metrics_port, probe


def test_service_carries_tcp_and_udp_on_the_listen_port() -> None:
    """
    One Service has TCP and UDP on the same port number, each sent to the
    container port that the matching ``--listen`` serves, and selects the
    Deployment's pods.
    """
    service = the("Service")
    deployment = the("Deployment")
    ports = service["spec"]["ports"]
    assert sorted(p["protocol"] for p in ports) == ["TCP", "UDP"]
    assert len({p["port"] for p in ports}) == 1
    assert len({p["name"] for p in ports}) == 2, "a Service with several ports names each"
    listening = {("UDP" if listener.datagram else "TCP"): listener.port for listener in options()["settings"].listen}
    for port in ports:
        target = container_port(port["targetPort"], port["protocol"])
        assert target == listening[port["protocol"]], port
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Client addresses reach capserv, so per-IP limits count clients.
    assert service["spec"].get("externalTrafficPolicy") == "Local"


def test_grace_period_covers_drain_shutdown_and_abort() -> None:
    """
    ``terminationGracePeriodSeconds`` is longer than the longest stop:
    ``--drain-delay`` + ``--shutdown-timeout`` + ``--abort-grace``, plus a
    margin to exit; there is no preStop hook to add to it (the drain delay
    does what a preStop sleep would).
    """
    parsed = options()
    config = parsed["settings"].config
    longest = float(parsed["drain-delay"]) + config.shutdown_timeout + config.abort_grace
    grace = the("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= longest + EXIT_MARGIN
    assert "preStop" not in container().get("lifecycle", {})


def test_readiness_notices_the_drain_before_it_ends() -> None:
    """
    The readiness probe sees ``/readyz``'s 503 (and the pod is marked not
    ready) well within ``--drain-delay``, while capserv still serves.
    """
    probe = container()["readinessProbe"]
    noticed = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    assert noticed < float(options()["drain-delay"])


def test_liveness_outlasts_the_stop_after_the_drain() -> None:
    """
    Once the drain is over, ``/healthz`` closes with the other listeners;
    the liveness probe's failures needed for a restart take longer than the
    rest of the stop (``--shutdown-timeout`` + ``--abort-grace``), so a
    stopping pod is never restarted for it.
    """
    probe = container()["livenessProbe"]
    config = options()["settings"].config
    tolerated = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    assert tolerated > config.shutdown_timeout + config.abort_grace


def test_pod_runs_unprivileged_on_a_read_only_root() -> None:
    """
    Not root, no privilege escalation, no capabilities, a read-only root
    file system, and resource requests and a memory limit.
    """
    pod = the("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container()["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_comments_and_page_give_the_manifest_s_stop_timing() -> None:
    """
    The manifest's comment and docs/operations.rst ("Drain timing") add up
    the stop with the numbers the container's args really give, and name
    the grace period the Deployment really has.
    """
    parsed = options()
    config = parsed["settings"].config
    parts = [float(parsed["drain-delay"]), config.shutdown_timeout, config.abort_grace]
    total = sum(parts)
    grace = the("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain, shutdown, abort = (f"{part:g}" for part in parts)
    manifest = " ".join(
        line.strip().lstrip("#").strip() for line in (MANIFESTS / "capserv.yaml").read_text().splitlines()
    )
    assert (
        f"--drain-delay ({drain}) + --shutdown-timeout ({shutdown}) + --abort-grace ({abort}) = {total:g} s" in manifest
    )
    assert f"{grace - total:g} s more" in manifest
    page = " ".join((ROOT / "docs" / "operations.rst").read_text().split())
    assert f"{drain} + {shutdown} + {abort} = {total:g} seconds, and {grace} leaves" in page
    assert f"``--drain-delay {drain}``" in page and f"``--shutdown-timeout`` ({shutdown})" in page
