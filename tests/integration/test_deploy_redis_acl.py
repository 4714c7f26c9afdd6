"""The deployment's Redis ACLs admit exactly what vgate does, on real Redis servers.

Both instances run as ``deploy/k8s`` runs them: the container args of the rendered
manifests (eviction policy, ``--aclfile``), the ACL file made by the manifests' own
``render-acl.sh`` from the ConfigMap's templates, with the passwords and URLs that
``deploy/k8s/make-secrets.sh`` prints. Then an engine supervisor's registry publishes an
engine as the user ``engine``, and a real gateway, as the user ``gateway`` on both
instances, makes and revokes a key, rate-limits it (requests, tokens, concurrency) and
caches an answer: every one of those must work and leave Redis's ACL LOG empty (no
command or key refused). Last, what the users must not do is refused, and logged.

A test-only admin user (full access) is added to the rendered files to read ACL LOG,
the keys and the config; it is not in ``deploy/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from engines.registry import EngineRecord, RedisRegistry
from tests.helpers.processes import free_port, run_process
from tests.integration.conftest import STUB_MODEL, Stub, start_gateway
from tests.integration.test_deploy_artifacts import _named, _render
from tests.integration.test_deploy_hardening import make_secret

ADMIN_KEY = "acl-operator-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "acl"}]


class Instance:
    """One Redis server started as the manifests start it."""

    def __init__(self, port: int, admin: redis.Redis) -> None:
        self.port = port
        self.admin = admin

    def url(self, deployed: str) -> str:
        """``deployed`` (a URL of the Secret) pointed at this local server."""
        host = deployed.split("@", 1)[1].split("/", 1)[0]
        return deployed.replace(host, f"127.0.0.1:{self.port}")

    def keys(self) -> set[str]:
        return {k.decode() if isinstance(k, bytes) else k for k in self.admin.keys("*")}

    def client(self, user: str, password: str) -> redis.Redis:
        return redis.Redis(port=self.port, username=user, password=password, socket_timeout=5)


@contextlib.contextmanager
def _as_deployed(
    name: str, documents: list[dict[str, Any]], passwords: dict[str, str], directory: Path
) -> Iterator[Instance]:
    kind = "StatefulSet" if name == "vgate-redis" else "Deployment"
    pod = _named(documents, kind, name)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    _, script, template, rendered = init["command"]
    acl = next(d for d in documents if d["kind"] == "ConfigMap" and "users.acl" in d["data"])
    directory.mkdir()
    for file, text in acl["data"].items():
        (directory / file).write_text(text)
    local = directory / "users.acl"
    render = [str(directory / Path(path).name) for path in (script, template)]
    subprocess.run(
        ["sh", *render, str(local)], check=True, env={"PATH": "/usr/bin:/bin", **passwords}
    )
    admin_password = secrets.token_hex(16)
    with local.open("a") as file:
        file.write(f"user vgate-test-admin on >{admin_password} ~* &* +@all\n")
    args = [str(local) if a == rendered else a for a in pod["containers"][0]["args"]]
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: scripts/bootstrap.sh installs it"
    argv = [binary, *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    with run_process(argv, ready_url=None):
        probe = redis.Redis(port=port, username="healthcheck", password="-", socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:  # the readiness probe's own check
            try:
                assert probe.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.05)
        admin = redis.Redis(port=port, username="vgate-test-admin", password=admin_password)
        yield Instance(port, admin)


def _ask(url: str, key: str, content: str) -> httpx.Response:
    body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": content}],
            "temperature": 0, "max_tokens": 4}  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_vgate_works_within_its_redis_acls_and_nothing_more(stub: Stub, tmp_path: Path) -> None:
    documents = _render("production")
    data = make_secret()["stringData"]
    passwords = {
        "REDIS_GATEWAY_PASSWORD": data["redis-gateway-password"],
        "REDIS_ENGINE_PASSWORD": data["redis-engine-password"],
    }
    with (
        _as_deployed("vgate-redis", documents, passwords, tmp_path / "main") as main,
        _as_deployed("vgate-redis-cache", documents, passwords, tmp_path / "cache") as cache,
    ):
        # the supervisor's registry, as the user "engine"
        registry = RedisRegistry(main.url(data["redis-engine-url"]), 60.0)
        record = EngineRecord("acl-engine", STUB_MODEL, stub.url, "ready", time.time(), "acl")

        async def publish() -> None:
            await registry.publish(record)
            assert [r.engine_id for r in await registry.records()] == ["acl-engine"]
            await registry.close()

        asyncio.run(publish())

        config = {
            "models": [  # a rollout's state is shared in Redis; no request goes to these
                {"name": f"acl-{v}", "endpoints": [stub.url]} for v in ("stable", "canary")
            ],
            "rollouts": [
                {
                    "model": "acl-rollout",
                    "variants": [
                        {"model": "acl-stable", "weight": 9},
                        {"model": "acl-canary", "weight": 1, "canary": True},
                    ],
                }
            ],
            "redis": {"url": main.url(data["redis-url"])},
            "cache": {"enabled": True, "redis_url": cache.url(data["redis-cache-url"])},
            "auth": {"enabled": True, "admin_key": ADMIN_KEY},
            "engines": {"watch_interval_s": 0.2},
        }
        for gateway in start_gateway(config, tmp_path):
            operator = {"Authorization": f"Bearer {ADMIN_KEY}"}
            deadline = time.monotonic() + 15
            while stub.url.removeprefix("http://") not in str(
                httpx.get(f"{gateway.operator_url}/sd/engines").json()
            ):  # the gateway reads the registry
                assert time.monotonic() < deadline, "the published engine never appeared"
                time.sleep(0.1)
            made = httpx.post(
                f"{gateway.operator_url}/admin/keys", headers=operator,
                json={"name": "acl-key", "rpm": 4, "tpm": 100_000, "max_concurrent": 2},
            )  # fmt: skip
            assert made.status_code == 201, made.text
            key = made.json()["key"]
            first, again = _ask(gateway.url, key, "acl"), _ask(gateway.url, key, "acl")
            assert (first.status_code, again.status_code) == (200, 200), again.text
            assert again.headers["x-cache"].lower() == "hit"
            bearer = {"Authorization": f"Bearer {key}"}
            answered = httpx.post(
                f"{gateway.url}/v1/responses",
                headers=bearer,
                json={"model": STUB_MODEL, "input": "acl", "max_output_tokens": 4},
                timeout=10,
            )  # the key's third request: a stored response
            assert answered.status_code == 200, answered.text
            stored = f"{gateway.url}/v1/responses/{answered.json()['id']}"
            retrieved = httpx.get(stored, headers=bearer)  # the fourth, a read: counted too
            assert retrieved.json()["id"] == answered.json()["id"], retrieved.text
            # the rollout's shared state: read, then written by an operator
            rollouts = f"{gateway.operator_url}/admin/rollouts"
            assert httpx.get(rollouts, headers=operator).status_code == 200
            weights = {"weights": {"acl-canary": 0}}
            changed = httpx.post(f"{rollouts}/acl-rollout/weights", headers=operator, json=weights)
            assert changed.status_code == 200, changed.text
            statuses = [_ask(gateway.url, key, f"acl {i}").status_code for i in range(3)]
            assert 429 in statuses and set(statuses) <= {200, 429}, statuses  # rpm: 4
            listed = httpx.get(f"{gateway.operator_url}/admin/keys", headers=operator)
            assert [k["name"] for k in listed.json()["data"]] == ["acl-key"]
            revoked = httpx.delete(f"{gateway.operator_url}/admin/keys/acl-key", headers=operator)
            assert revoked.status_code == 200, revoked.text
            assert _ask(gateway.url, key, "acl").status_code == 401

        # everything vgate did was allowed, and went where it belongs
        for instance in (main, cache):
            assert instance.admin.acl_log() == [], instance.admin.acl_log()
        main_keys, cache_keys = main.keys(), cache.keys()
        assert {"vgate:engines", "vgate:keys:version"} <= main_keys  # (no key left: no hash)
        assert any(k.startswith("vgate:rl:") for k in main_keys)
        assert any(k.startswith("vgate:responses:") for k in main_keys)
        assert {"vgate:rollouts", "vgate:rollouts:version"} <= main_keys
        assert not any(k.startswith("vgate:cache:") for k in main_keys)
        assert cache_keys and all(k.startswith("vgate:cache:") for k in cache_keys)
        assert main.admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert cache.admin.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"

        # and what they must not do is refused
        engine = main.client("engine", data["redis-engine-password"])
        gateway_main = main.client("gateway", data["redis-gateway-password"])
        gateway_cache = cache.client("gateway", data["redis-gateway-password"])
        refused: list[Callable[[], object]] = [
            lambda: engine.set("vgate:keys:version", "9"),
            lambda: engine.hgetall("vgate:keys"),
            lambda: engine.eval("return 1", 0),
            lambda: engine.get("vgate:rl:acl-key:win"),
            lambda: gateway_main.flushall(),
            lambda: gateway_main.config_get("*"),
            lambda: gateway_main.keys("*"),
            lambda: gateway_main.set("elsewhere", "x"),
            lambda: gateway_main.get("vgate:cache:x"),
            lambda: gateway_main.publish("vgate", "x"),
            lambda: gateway_cache.get("vgate:keys:version"),
            lambda: gateway_cache.delete("vgate:cache:x"),
        ]
        for command in refused:
            with pytest.raises(NoPermissionError):
                command()
        for user, password in (("engine", data["redis-engine-password"]), ("default", "x")):
            with pytest.raises((AuthenticationError, ResponseError)):
                cache.client(user, password).ping()
        with pytest.raises((AuthenticationError, ResponseError)):
            redis.Redis(port=main.port).get("vgate:keys:version")  # no user: the default
        assert len(main.admin.acl_log()) >= 8  # and the refusals are logged
