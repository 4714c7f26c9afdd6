"""Every deployment artefact, checked offline: Kustomize renders validated against the
Kubernetes schemas, Dockerfiles linted by hadolint, Compose files parsed and their files
present, the Grafana dashboard and Prometheus alerts referring only to metric names
that a running gateway (and the engines it scrapes) really export, and the operator
port (``server.admin_port``) scraped by Prometheus but never exposed to clients.
The hardening (Redis ACL users and eviction policies, pod security contexts, network
policies, secrets from the environment only) is checked in
``test_deploy_hardening.py``; that the ACLs admit exactly what vgate does, against real
Redis servers, in ``test_deploy_redis_acl.py``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.30"
METRIC = re.compile(r"\b(?:vgate_[a-z0-9_]+|vllm:[a-z0-9_:]+)")


def _kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl is missing: scripts/bootstrap.sh installs Debian's kubernetes-client"
    return found


@pytest.mark.parametrize("overlay", ["production", "cpu-dev"])
def test_kustomize_overlays_render_valid_kubernetes_objects(overlay: str) -> None:
    rendered = subprocess.run(
        [_kubectl(), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "NetworkPolicy", "ConfigMap"} <= kinds  # fmt: skip
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    gateway = _named(documents, "Deployment", "vgate-gateway")
    assert gateway["spec"]["replicas"] >= 2
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"]


def test_engines_request_a_gpu_in_production_and_none_on_cpu() -> None:
    def engine_resources(overlay: str) -> dict[str, Any]:
        rendered = subprocess.run(
            [_kubectl(), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        engine = next(
            d for d in yaml.safe_load_all(rendered)
            if d and d["kind"] == "StatefulSet" and d["metadata"]["name"] == "vgate-engine"
        )  # fmt: skip
        resources: dict[str, Any] = engine["spec"]["template"]["spec"]["containers"][0]["resources"]
        return resources

    assert engine_resources("production")["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in engine_resources("cpu-dev")["limits"]


@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("*.Dockerfile")), ids=str)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert "\nUSER " in text and "HEALTHCHECK" in text  # non-root, health-checked


@pytest.mark.parametrize("compose", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_files_parse_and_name_existing_files(compose: str) -> None:
    path = DEPLOY / "docker" / compose
    spec = yaml.safe_load(path.read_text())
    services = spec["services"]
    assert {"redis", "gateway", "engine", "prometheus", "grafana"} <= services.keys()
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build:
            assert (path.parent / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (path.parent / source).exists(), f"{name}: {source}"
        for dependency in service.get("depends_on", []):
            assert dependency in services
    gpu = services["engine"].get("deploy", {}).get("resources", {}).get("reservations", {})
    assert bool(gpu) == (compose == "docker-compose.yml")


@pytest.fixture(scope="module")
def exported_metrics(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Every metric name a gateway with an engine behind it exposes, and the engine's."""
    config = {"models": [{"name": STUB_MODEL, "endpoints": [stub.url]}]}
    for gateway in start_gateway(config, tmp_path_factory.mktemp("metrics")):
        gateway.client().chat.completions.create(
            model=STUB_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        yield _names(gateway.metrics()) | _names(httpx.get(f"{stub.url}/metrics").text)


def _names(exposition: str) -> set[str]:
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_grafana_dashboard_uses_only_exported_metrics(
    exported_metrics: set[str], gateway: Gateway
) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "vgate-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in expressions for m in METRIC.findall(e)}
    assert used, "the dashboard has no queries"
    assert used <= exported_metrics, sorted(used - exported_metrics)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests/s", "error", "latency", "first token", "tokens/s", "cache hit",
                  "rate-limited", "per engine", "kv-cache", "restarts"):  # fmt: skip
        assert topic in titles, topic


def test_prometheus_config_and_alerts_are_well_formed(exported_metrics: set[str]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"vgate-gateway", "vllm-engines"} <= jobs
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {
        "VgateLatencyP99High",
        "VgateErrorRateHigh",
        "VgateEngineDown",
        "VgateRedisDown",
    } <= names
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        used = set(METRIC.findall(rule["expr"]))
        assert used and used <= exported_metrics, (rule["alert"], used - exported_metrics)
    promtool = shutil.which("promtool")
    if promtool is not None:  # Prometheus's own checker, where it is installed
        rules_file = str(DEPLOY / "prometheus" / "alerts.yml")
        result = subprocess.run(
            [promtool, "check", "rules", rules_file], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_gateway_lists_engines_for_prometheus_service_discovery(
    stub: Stub, gateway: Gateway
) -> None:
    groups = httpx.get(f"{gateway.operator_url}/sd/engines").json()
    targets = {t for g in groups for t in g["targets"]}
    assert stub.url.removeprefix("http://") in targets
    assert httpx.get(f"{gateway.url}/sd/engines").status_code == 404  # not for clients


PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {
        "matchExpressions": [
            {"key": "app.kubernetes.io/name", "operator": "In", "values": ["prometheus"]}
        ]
    },
}
"""Prometheus's pods, and only those, in the monitoring namespace."""


def _named(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)


def _render(overlay: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [_kubectl(), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(rendered) if d]


@pytest.mark.parametrize("overlay", ["production", "cpu-dev"])
def test_kubernetes_scrapes_the_operator_port_and_never_exposes_it(overlay: str) -> None:
    documents = _render(overlay)
    config_map = next(
        d for d in documents if d["kind"] == "ConfigMap" and "gateway.yaml" in d["data"]
    )
    server = yaml.safe_load(config_map["data"]["gateway.yaml"])["server"]
    public, admin = server["port"], server["admin_port"]
    assert server["admin_host"] == "0.0.0.0" and admin != public  # reachable from Prometheus
    deployment = _named(documents, "Deployment", "vgate-gateway")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(admin)
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": public, "admin": admin}
    service = next(
        d for d in documents if d["kind"] == "Service" and d["metadata"]["name"] == "vgate-gateway"
    )
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]  # the API only
    policy = next(
        d for d in documents
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "vgate-gateway-ingress"
    )  # fmt: skip
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    rules = policy["spec"]["ingress"]
    assert all(rule.get("ports") for rule in rules)  # no rule opens every port
    for rule in rules:
        named = {p["port"] for p in rule["ports"]}
        if "admin" in named:
            assert rule["from"] == [PROMETHEUS]
        else:
            assert named == {"http"}


@pytest.mark.parametrize("compose", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_publishes_the_api_and_prometheus_scrapes_the_operator_port(compose: str) -> None:
    server = yaml.safe_load((DEPLOY / "docker" / "gateway.yaml").read_text())["server"]
    public, admin = server["port"], server["admin_port"]
    assert server["admin_host"] == "0.0.0.0" and admin != public
    gateway = yaml.safe_load((DEPLOY / "docker" / compose).read_text())["services"]["gateway"]
    published = [str(p).rsplit(":", 1)[-1] for p in gateway["ports"]]
    assert published == [str(public)]  # the operator port stays on the compose network
    assert f"EXPOSE {public} {admin}" in (DEPLOY / "docker" / "gateway.Dockerfile").read_text()
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["vgate-gateway"]["static_configs"] == [{"targets": [f"gateway:{admin}"]}]
    discovery = jobs["vllm-engines"]["http_sd_configs"]
    assert [sd["url"] for sd in discovery] == [f"http://gateway:{admin}/sd/engines"]
    # The operator listener asks for server.operator_token: the gateway gets it from the
    # environment, Prometheus from the secret file Compose makes of the same variable,
    # and sends it to the listener (its metrics and its service discovery), never to
    # the engines it discovers.
    variable = gateway["environment"]["VGATE_SERVER__OPERATOR_TOKEN"]
    assert variable.startswith("${VGATE_OPERATOR_TOKEN:?")
    stack = yaml.safe_load((DEPLOY / "docker" / compose).read_text())
    assert stack["secrets"]["operator-token"] == {"environment": "VGATE_OPERATOR_TOKEN"}
    assert stack["services"]["prometheus"]["secrets"] == ["operator-token"]
    sent = {"credentials_file": "/run/secrets/operator-token"}
    assert jobs["vgate-gateway"]["authorization"] == sent
    assert [sd["authorization"] for sd in discovery] == [sent]
    assert "authorization" not in jobs["vllm-engines"]


def test_kubernetes_scrape_job_sends_the_operator_token() -> None:
    jobs = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes-jobs.yml").read_text())
    (job,) = jobs["scrape_configs"]
    assert set(job["authorization"]) == {"credentials_file"}
    kept = {rule["regex"] for rule in job["relabel_configs"] if rule.get("action") == "keep"}
    assert kept == {"vgate-gateway", "true"}  # the gateway pods, by their annotations


AGGREGATED = re.compile(
    r"(?:histogram_quantile\([0-9.]+, )?(?:sum|min|max)"
    r"(?: by \([a-z, ]+\)| without \(worker\))? ?\("
)
"""A query that starts by aggregating: with ``server.workers > 1`` every gateway sample
carries a ``worker`` label (each scrape shows every worker's figures), so a query of
the bare series would split each line per worker (and an alert fire once per worker)."""


def test_dashboard_and_alerts_aggregate_the_workers_away() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "vgate-dashboard.json").read_text())
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    gateway_queries = [e for e in expressions if "vgate_" in e]
    assert len(gateway_queries) > 20  # not vacuous
    bare = [e for e in gateway_queries if not AGGREGATED.match(e)]
    assert not bare, bare
    for expression in gateway_queries:  # grouping by worker would split as much
        assert "worker" not in expression or "without (worker)" in expression, expression
