"""The deployment's hardening, checked offline on the rendered Kustomize overlays, the
Compose files and ``deploy/k8s/make-secrets.sh``:

- Redis: ACL users from a mounted, rendered ACL file (the default user off), each
  component's URL in the Secret carrying its own user, passwords only from the Secret;
  the main instance never evicts (``noeviction``), the cache's own instance evicts LRU,
  both under a ``maxmemory`` below their memory limit;
- every pod and container unprivileged (non-root, no privilege escalation, every
  capability dropped, read-only root filesystem, no service-account token);
- NetworkPolicies: each vgate pod selected, and only the right peers on the right ports;
- no secret in a manifest: Compose and Kubernetes take every one from the environment
  or the Secret.

That the ACLs admit what vgate does and refuse the rest is shown against real Redis
servers in ``test_deploy_redis_acl.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from tests.integration.test_deploy_artifacts import DEPLOY, PROMETHEUS, _named, _render

OVERLAYS = ["production", "cpu-dev"]
WORKLOADS = ("Deployment", "StatefulSet")
REDIS = {
    "vgate-redis": ("StatefulSet", "users.acl"),
    "vgate-redis-cache": ("Deployment", "cache-users.acl"),
}
ENGINE_PORTS = (20000, 20999)


def _pods(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every workload's pod template, by workload name."""
    return {
        d["metadata"]["name"]: d["spec"]["template"] for d in documents if d["kind"] in WORKLOADS
    }


def _args(container: dict[str, Any]) -> dict[str, str]:
    """``--name value`` pairs of a container's args."""
    args = container["args"]
    return {args[i].removeprefix("--"): args[i + 1] for i in range(0, len(args), 2)}


def _bytes(quantity: str) -> int:
    """A Redis (``1536mb``, ``2gb``) or Kubernetes (``2Gi``) memory size in bytes."""
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", quantity).groups()  # type: ignore[union-attr]
    scale = {"": 1, "mb": 2**20, "gb": 2**30, "Mi": 2**20, "Gi": 2**30}[unit]
    return int(number) * scale


def _secret_refs(container: dict[str, Any]) -> dict[str, str]:
    """Environment variable → key of the Secret vgate-secrets it comes from."""
    refs = {}
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == "vgate-secrets", variable
            refs[variable["name"]] = ref["key"]
        else:
            assert "://" not in str(variable.get("value", "")), variable  # no URL literal
    return refs


def make_secret(namespace: str = "vgate", **env: str) -> dict[str, Any]:
    """The Secret ``deploy/k8s/make-secrets.sh`` prints."""
    printed = subprocess.run(
        ["sh", str(DEPLOY / "k8s" / "make-secrets.sh"), namespace],
        capture_output=True, text=True, check=True,
        env={"PATH": os.environ["PATH"], **env},
    ).stdout  # fmt: skip
    secret: dict[str, Any] = yaml.safe_load(printed)
    return secret


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_needs_acl_users_from_the_secret(overlay: str) -> None:
    documents = _render(overlay)
    pods = _pods(documents)
    acl = next(d for d in documents if d["kind"] == "ConfigMap" and "users.acl" in d["data"])
    for name, (kind, template) in REDIS.items():
        _named(documents, kind, name)
        pod = pods[name]["spec"]
        (init,) = pod["initContainers"]
        (redis,) = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["acl-template"]["configMap"]["name"] == acl["metadata"]["name"]
        assert volumes["acl"]["emptyDir"]["medium"] == "Memory"  # never on a disk
        rendered = f"{mounts['acl']}/users.acl"
        assert init["command"] == ["sh", f"{mounts['acl-template']}/render-acl.sh",
                                   f"{mounts['acl-template']}/{template}", rendered]  # fmt: skip
        assert _args(redis)["aclfile"] == rendered
        assert {m["name"]: m.get("readOnly") for m in redis["volumeMounts"]}["acl"] is True
        # passwords reach Redis from the Secret, as the environment of the renderer only
        users = _acl_users(acl["data"][template])
        every_rule = " ".join(" ".join(r) for r in users.values())
        placeholders = set(re.findall(r"#@([A-Z_]+)_SHA256@", every_rule))
        refs = _secret_refs(init)
        assert set(refs) == placeholders
        assert all(key == name.lower().replace("_", "-") for name, key in refs.items())
        assert not redis.get("env")
        assert users["default"][:2] == ["off", "resetpass"] and "-@all" in users["default"]
        assert users["healthcheck"][-2:] == ["-@all", "+ping"] and "nopass" in users["healthcheck"]
        probe = " ".join(redis["readinessProbe"]["exec"]["command"])
        assert "--user healthcheck" in probe and "= PONG" in probe
        for user, rules in users.items():
            assert not any(r.startswith(">") for r in rules), user  # no clear-text password
            assert not {"~*", "allkeys", "+@all", "&*", "allchannels"} & set(rules), user
            assert "resetchannels" in rules and not any(r[0] == "&" for r in rules), user
    users = _acl_users(acl["data"]["users.acl"])
    assert set(users) == {"default", "healthcheck", "gateway", "engine"}
    assert [r for r in users["engine"] if r.startswith("~")] == ["~vgate:engines"]
    cache_users = _acl_users(acl["data"]["cache-users.acl"])
    assert set(cache_users) == {"default", "healthcheck", "gateway"}
    cache_keys = [r for r in cache_users["gateway"] if r[0] == "~"]
    assert cache_keys == ["~vgate:cache:*"]

    gateway = pods["vgate-gateway"]["spec"]["containers"][0]
    assert _secret_refs(gateway) == {
        "VGATE_REDIS__URL": "redis-url",
        "VGATE_CACHE__REDIS_URL": "redis-cache-url",
        "VGATE_AUTH__ADMIN_KEY": "admin-key",
        "VGATE_SERVER__OPERATOR_TOKEN": "operator-token",
    }
    supervisor = pods["vgate-engine"]["spec"]["containers"][0]
    assert _secret_refs(supervisor) == {"VGATE_REDIS__URL": "redis-engine-url"}
    assert not any(d["kind"] == "Secret" for d in documents)  # made out of band, never here


def _acl_users(template: str) -> dict[str, list[str]]:
    users = {}
    for line in template.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, name, *rules = line.split()
            assert keyword == "user", line
            users[name] = rules
    return users


def test_the_secret_script_gives_each_component_its_own_redis_user() -> None:
    documents = _render("production")
    services = {d["metadata"]["name"] for d in documents if d["kind"] == "Service"}
    secret = make_secret()
    kubernetes_validate.validate(secret, "1.30", strict=True)
    data = secret["stringData"]
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (
        "vgate-secrets",
        "vgate",
    )
    expected = {
        "redis-url": ("gateway", "redis-gateway-password", "vgate-redis"),
        "redis-cache-url": ("gateway", "redis-gateway-password", "vgate-redis-cache"),
        "redis-engine-url": ("engine", "redis-engine-password", "vgate-redis"),
    }
    for key, (user, password, host) in expected.items():
        url = urlparse(data[key])
        assert (url.username, url.password, url.hostname) == (user, data[password], host)
        assert host in services and url.path == "/0"
    for key in ("admin-key", "operator-token", "redis-gateway-password", "redis-engine-password"):
        assert re.fullmatch(r"[0-9a-f]{48}", data[key]), key  # 192 random bits
    assert data["operator-token"] != data["admin-key"]
    assert data["redis-gateway-password"] != data["redis-engine-password"]
    assert make_secret()["stringData"]["admin-key"] != data["admin-key"]  # random each time
    chosen = "my-admin-key-from-a-vault"
    assert make_secret(VGATE_ADMIN_KEY=chosen)["stringData"]["admin-key"] == chosen
    for bad in ("too-short", 'has"quote-0123456789'):
        with pytest.raises(subprocess.CalledProcessError):
            make_secret(VGATE_ADMIN_KEY=bad)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_evicts_cache_entries_only(overlay: str) -> None:
    pods = _pods(_render(overlay))
    policies = {"vgate-redis": "noeviction", "vgate-redis-cache": "allkeys-lru"}
    for name, policy in policies.items():
        (redis,) = pods[name]["spec"]["containers"]
        args = _args(redis)
        assert args["maxmemory-policy"] == policy
        limit = _bytes(redis["resources"]["limits"]["memory"])
        assert 0 < _bytes(args["maxmemory"]) <= limit * 3 // 4  # headroom for overhead
    cache = _args(pods["vgate-redis-cache"]["spec"]["containers"][0])
    assert cache["appendonly"] == "no" and cache["save"] == ""  # nothing kept on restart


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_unprivileged(overlay: str) -> None:
    pods = _pods(_render(overlay))
    assert set(pods) == {"vgate-gateway", "vgate-engine", "vgate-redis", "vgate-redis-cache"}
    for name, template in pods.items():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{container['name']}"
            secure = container["securityContext"]
            assert secure["allowPrivilegeEscalation"] is False, where
            assert secure["capabilities"] == {"drop": ["ALL"]}, where
            assert secure["readOnlyRootFilesystem"] is True, where
            assert not secure.get("privileged") and "runAsUser" not in secure, where
    engine = pods["vgate-engine"]["spec"]
    writable = {m["mountPath"] for m in engine["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/home/vgate", "/models", "/dev/shm"} <= writable  # vLLM's caches
    home = {e["name"]: e.get("value") for e in engine["containers"][0]["env"]}["HOME"]
    assert home == "/home/vgate"
    gateway = pods["vgate-gateway"]["spec"]["containers"][0]
    assert "/tmp" in {m["mountPath"] for m in gateway["volumeMounts"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_the_peers_each_port_needs(overlay: str) -> None:
    documents = _render(overlay)
    pods = _pods(documents)
    labels = {name: template["metadata"]["labels"] for name, template in pods.items()}
    policies = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "NetworkPolicy"}

    def selects(selector: dict[str, Any]) -> set[str]:
        assert set(selector) == {"matchLabels"}, selector
        wanted = selector["matchLabels"].items()
        return {name for name, pod in labels.items() if wanted <= pod.items()}

    def peer(name: str) -> dict[str, Any]:
        return {"podSelector": {"matchLabels": labels[name]}}

    selected = {name: selects(spec["podSelector"]) for name, spec in policies.items()}
    assert sorted(n for names in selected.values() for n in names) == sorted(pods)  # each once
    for spec in policies.values():
        assert spec["policyTypes"] == ["Ingress"]
        assert all(rule.get("ports") for rule in spec["ingress"])  # no rule opens every port
    by_pod = {next(iter(names)): policies[policy] for policy, names in selected.items()}

    engine_range = [{"port": ENGINE_PORTS[0], "endPort": ENGINE_PORTS[1], "protocol": "TCP"}]
    assert by_pod["vgate-engine"]["ingress"] == [
        {"from": [peer("vgate-gateway")], "ports": engine_range},
        {"from": [PROMETHEUS], "ports": engine_range},
    ]
    engine_context = pods["vgate-engine"]["spec"]["securityContext"]
    sysctls = {s["name"]: s["value"] for s in engine_context["sysctls"]}
    assert sysctls["net.ipv4.ip_local_port_range"] == f"{ENGINE_PORTS[0]} {ENGINE_PORTS[1]}"
    redis_port = [{"port": 6379, "protocol": "TCP"}]
    assert by_pod["vgate-redis"]["ingress"] == [
        {"from": [peer("vgate-gateway"), peer("vgate-engine")], "ports": redis_port}
    ]
    assert by_pod["vgate-redis-cache"]["ingress"] == [
        {"from": [peer("vgate-gateway")], "ports": redis_port}
    ]
    assert labels["vgate-gateway"] != labels["vgate-engine"]  # the selectors tell them apart


@pytest.mark.parametrize("compose", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_takes_every_secret_from_the_environment(compose: str) -> None:
    services = yaml.safe_load((DEPLOY / "docker" / compose).read_text())["services"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == (
        "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"
    )  # required: Compose refuses to start without it
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    for name in ("grafana", "prometheus"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"]), name
    gateway, engine = services["gateway"]["environment"], services["engine"]["environment"]
    assert gateway["VGATE_AUTH__ADMIN_KEY"].startswith("${VGATE_ADMIN_KEY:?")
    urls = {
        "gateway": urlparse(gateway["VGATE_REDIS__URL"]),
        "cache": urlparse(gateway["VGATE_CACHE__REDIS_URL"]),
        "engine": urlparse(engine["VGATE_REDIS__URL"]),
    }
    assert {k: (u.username, u.hostname) for k, u in urls.items()} == {
        "gateway": ("gateway", "redis"),
        "cache": ("gateway", "redis-cache"),
        "engine": ("engine", "redis"),
    }
    assert {u.password for u in urls.values()} == {
        "${VGATE_REDIS_GATEWAY_PASSWORD}", "${VGATE_REDIS_ENGINE_PASSWORD}"
    }  # fmt: skip
    for name, template, policy in (("redis", "users.acl", "noeviction"),
                                   ("redis-cache", "cache-users.acl", "allkeys-lru")):  # fmt: skip
        command = " ".join(services[name]["entrypoint"])
        assert f"render-acl.sh /etc/redis-acl/{template} /tmp/users.acl" in command
        assert "--aclfile /tmp/users.acl" in command and f"--maxmemory-policy {policy}" in command
        assert "../k8s/base/redis:/etc/redis-acl:ro" in services[name]["volumes"]
        assert Path(DEPLOY / "k8s" / "base" / "redis" / template).is_file()
