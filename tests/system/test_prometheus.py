"""
The Prometheus rules of docs/prometheus/ agree with what capserv serves:
every metric name and label value the rules and their unit tests use is one
capserv's ``/metrics`` serves, the connection limit they assume is
``--max-connections``' default, and the example configuration scrapes the
jobs the rules select, probing the path capserv answers readiness on.

``promtool check rules``, ``promtool check config`` and ``promtool test
rules`` check the files themselves; ``tox -e docs`` runs them and this file
(which needs PyYAML, as the Kubernetes test does; the test matrix leaves it
out).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from capserv import CapservConfig, UppercaseFactory
from capserv.protocols.udp import DatagramState
from capserv.site.health import health_children
from capserv.site.metrics import CapservCollector
from capserv.tap import Options

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "docs" / "prometheus"
#: The labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance"}
METRIC_NAME = re.compile(r"\bcapserv_[a-z_]+\b")
MATCHER = re.compile(r'(\w+)\s*(?:=|!=|=~|!~)\s*"([^"]*)"')


def load(name: str) -> Any:
    return yaml.safe_load((FOLDER / name).read_text())


@cache
def served() -> dict[str, dict[str, set[str]]]:
    """What capserv's /metrics serves: each sample name, with the values of
    each of its labels."""
    config = CapservConfig()
    factory, datagrams = UppercaseFactory(config, clock=Clock()), DatagramState(config, clock=Clock())
    collector = CapservCollector(lambda: {"tcp": factory.snapshot(), "udp": datagrams.snapshot(), "workers": 1}, config)
    registry = CollectorRegistry()
    registry.register(collector)
    found: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = found.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return found


def rules() -> list[dict[str, Any]]:
    return [rule for group in load("capserv.rules.yml")["groups"] for rule in group["rules"]]


def check_selector(name: str, matchers: dict[str, str], where: str) -> None:
    """``name{matchers}`` selects series capserv serves."""
    assert name in served(), f"{where}: capserv serves no {name}"
    labels = served()[name]
    for key, value in matchers.items():
        if key in TARGET_LABELS:
            continue
        assert key in labels, f"{where}: {name} has no label {key}"
        assert value in labels[key], f"{where}: {name}'s {key} is never {value!r} (only {sorted(labels[key])})"


def test_rules_use_only_what_capserv_serves() -> None:
    """
    Each ``capserv_*`` name in a rule's expression is a sample name of
    capserv's /metrics (with ``_total`` on counters), and each label value a
    matcher compares with is one capserv gives that label (on a recorded
    ``capserv:*`` series, the label of the metric it is made of).
    """
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    used = set()
    for rule in rules():
        where = rule.get("alert") or rule["record"]
        for match in re.finditer(r"\b(capserv[_:][a-z_:0-9]+)(?:\{([^}]*)\})?", rule["expr"]):
            name, matchers = match.group(1), dict(MATCHER.findall(match.group(2) or ""))
            if name in recorded:
                # A recorded series has the labels of what it was made of.
                (name,) = METRIC_NAME.findall(recorded[name])[:1]
            check_selector(name, matchers, where)
            used.add(name)
    # What the brief of the rules asks for is there: readiness, refusals,
    # drops, the connection limit, workers.
    assert {
        "capserv_connections_refused_total",
        "capserv_datagrams_dropped_total",
        "capserv_connections_active",
        "capserv_workers",
    } <= used


def test_rule_tests_feed_series_capserv_serves() -> None:
    """
    The unit tests' input series are capserv's names and label values, so
    they test the rules against what a scrape really holds.
    """
    for case in load("capserv.rules.test.yml")["tests"]:
        for series in case["input_series"]:
            match = re.fullmatch(r"(\w+)\{(.*)\}", series["series"])
            assert match is not None, series
            name, matchers = match.group(1), dict(MATCHER.findall(match.group(2)))
            if name.startswith("capserv_"):
                check_selector(name, matchers, series["series"])
                assert set(matchers) - TARGET_LABELS == set(served()[name]), f"{series['series']}: labels"
            else:
                assert name in {"up", "probe_success"}, series


def test_connection_limit_is_the_default_max_connections() -> None:
    """
    ``capserv:connections_limit`` multiplies the processes serving by
    ``--max-connections``' default (the number the page tells operators to
    change along with the option).
    """
    (limit,) = [rule for rule in rules() if rule.get("record") == "capserv:connections_limit"]
    match = re.fullmatch(r"(\d+) \* capserv_workers", limit["expr"].strip())
    assert match is not None, limit["expr"]
    options = Options()
    options.parseOptions([])
    assert int(match.group(1)) == options["settings"].config.max_connections


def test_example_configuration_scrapes_the_jobs_the_rules_select() -> None:
    """
    docs/prometheus/prometheus.yml loads the rules, and has a scrape job for
    every ``job=`` the rules select; the readiness job probes ``/readyz``,
    the path capserv answers readiness on, and keeps the metrics target as
    its instance (CapservNotReady matches the two on ``instance``).
    """
    config = load("prometheus.yml")
    assert config["rule_files"] == ["capserv.rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    selected = {value for rule in rules() for key, value in MATCHER.findall(rule["expr"]) if key == "job"}
    assert selected == set(jobs) == {"capserv", "capserv-readyz"}
    readyz = jobs["capserv-readyz"]
    assert readyz["static_configs"] == jobs["capserv"]["static_configs"]
    relabel = {item["target_label"]: item for item in readyz["relabel_configs"]}
    path = relabel["__param_target"]["replacement"].rsplit("/", 1)[1]
    assert path.encode() in health_children(None)  # type: ignore[arg-type]
    assert path == "readyz"
    assert relabel["instance"]["source_labels"] == ["__address__"]


def test_operations_page_lists_every_alert_with_its_duration() -> None:
    """
    docs/operations.rst's table of alerts has one row per alert of the
    rules, with the rule's ``for`` (``at once`` for none).
    """
    page = (ROOT / "docs" / "operations.rst").read_text()
    table = page.split("The alerts, each per instance", 1)[1].split("\n\n", 2)[1]
    rows = dict(re.findall(r"^``(\w+)``\s+(\d+m|at once)\s", table, re.M))
    alerts = {rule["alert"]: rule.get("for", "at once") for rule in rules() if "alert" in rule}
    assert rows == alerts
