"""Deployment files, checked structurally (no cluster runs here): probes,
settings, KEDA's cap and group, and that every metric the Grafana dashboard
queries is one the worker actually exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from patronage.streams.settings import Settings
from patronage.streams.worker import Runtime

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return doc


def setting_name(env: str) -> str:
    assert env.startswith("PATRONAGE_"), env
    return env.removeprefix("PATRONAGE_").lower()


def test_every_manifest_is_yaml_with_kind() -> None:
    for path in sorted(K8S.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path


def test_deployment_probes_and_config() -> None:
    deployment = load("deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    config = load("configmap.yaml")["data"]
    assert int(config["PATRONAGE_WEB_PORT"]) == port
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"patronage", "patronage-secrets"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_configmap_and_secret_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load("configmap.yaml")["data"]
    secret = load("secret.example.yaml")["stringData"]
    for env, value in {**config, **secret}.items():
        assert setting_name(env) in Settings.model_fields, env
        monkeypatch.setenv(env, str(value))
    settings = Settings()  # validates every value
    for env in secret:
        assert isinstance(getattr(settings, setting_name(env)), SecretStr), env


def test_keda_scales_on_the_group_capped_at_partitions() -> None:
    scaled = load("keda-scaledobject.yaml")
    config = load("configmap.yaml")["data"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == load("deployment.yaml")["metadata"]["name"]
    assert scaled["spec"]["maxReplicaCount"] <= int(config["PATRONAGE_PARTITIONS"])
    inputs = set(Settings().input_topics)
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == config["PATRONAGE_GROUP_ID"]
        assert trigger["metadata"]["topic"] in inputs
        assert trigger["metadata"]["bootstrapServers"] == config["PATRONAGE_KAFKA_BOOTSTRAP"]


def exported_metric_families() -> set[str]:
    text = Runtime(Settings()).metrics.render().decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "patronage-dashboard.json").read_text())
    families = exported_metric_families()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            for name in re.findall(r"\bpatronage_[a-z_]+", target["expr"]):
                base = re.sub(r"_(sum|count)$", "", name)
                assert base in families, f"panel {panel['title']!r} queries unknown {name}"
                used.add(base)
    # The panels the built-in /dashboard shows are in Grafana too.
    assert {
        "patronage_consumer_lag_records",
        "patronage_consumer_oldest_waiting_seconds",
        "patronage_events_applied_total",
        "patronage_events_rejected_total",
        "patronage_segment_customers",
    } <= used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_runs_the_stack_with_provisioned_grafana() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "prometheus", "grafana"} <= set(services)
    for env in services["worker"]["environment"]:
        assert setting_name(env) in Settings.model_fields, env
    for volume in services["grafana"]["volumes"] + services["prometheus"]["volumes"]:
        source = volume.split(":")[0]
        assert (ROOT / source).exists(), source
    assert services["worker"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / "deploy" / "Dockerfile").exists()
