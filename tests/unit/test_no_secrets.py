"""No secret value is committed: every file git would commit (tracked, or untracked and
not ignored) is searched for what a leaked secret looks like.

What counts as a secret: a private key, an API key vgate generated (``sk-vg-...``), a
password inside a URL (``scheme://user:password@host``), a literal admin key, Grafana
admin password, Redis password (``requirepass``, a clear-text ``>password`` in an ACL
rule) or any quoted literal assigned to something called password, secret or token.
What does not: placeholders (``$VAR``, ``${VAR}``, ``$(VAR)``, ``<...>``, ``...``,
``@NAME_SHA256@``) and the words docs use for one (``password``, ``secret``, ...).

Test fixtures need fake secrets. Under ``tests/`` and ``benchmarks/`` a value holding
the digit run ``0123456789`` (or ``9876543210``) is visibly fake and passes: the
convention every fixture key here follows. Anything else is in :data:`ALLOWED`, by file
and value, and the list stays small: a finding is fixed in the file, not added there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        # credentials in engine URLs must be hidden from every output: the fake ones
        # those tests look for
        ("tests/unit/pool/test_display.py", "s3cret"),
        ("tests/integration/test_operator_listener.py", "vgate-user"),
        # an engine's environment must not inherit the gateway's secrets: fake ones
        ("tests/unit/engines/test_hygiene.py", "admin-secret"),
        ("tests/unit/engines/test_hygiene.py", "given-on-purpose"),
    }
)
FIXTURE_DIRS = ("tests/", "benchmarks/")
FAKE_MARKERS = ("0123456789", "9876543210")
PLACEHOLDER_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pw",
        "secret",
        "token",
        "key",
        "p",
        "x",
        "changeme",
        "admin-key",
        "operator-token",
    }  # the last two: names of the Kubernetes Secret's keys
)

_VALUE = r"[^\s\"'`#,;)}\]]+"
RULES: dict[str, re.Pattern[str]] = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----()"),
    "vgate API key": re.compile(r"\b(sk-vg-[A-Za-z0-9_-]{16,})"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@\"'`]*:([^\s@/\"'`]+)@"),
    "admin key": re.compile(r"(?i)admin[-_]?key[\"']?\s*[:=]\s*[\"']?(" + _VALUE + ")"),
    "Grafana admin password": re.compile(
        r"GF_SECURITY_ADMIN_PASSWORD[\"']?\s*[:=]\s*[\"']?(" + _VALUE + ")"
    ),
    "Redis password": re.compile(r"\b(?:requirepass|masterauth)\s+[\"']?(" + _VALUE + ")"),
    "clear-text ACL password": re.compile(r"^\s*user\s+\S+\s.*?\s>(\S+)", re.MULTILINE),
    "password, secret or token": re.compile(
        r"(?i)\b\w*(?:password|passwd|secret|token)\w*[\"']?\s*[:=]\s*[\"']((?![a-z]+://)[^\"'\s]{8,})[\"']"
    ),
}


def _committable_files() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted({path for path in listing.split("\0") if path and (ROOT / path).is_file()})


def _is_placeholder(value: str, quoted: bool, code: bool) -> bool:
    """A value that stands for a secret rather than being one. Unquoted in Python, a
    name or an expression (``ADMIN_KEY``, ``settings.auth.admin_key``) is code."""
    return (
        not value
        or value[0] in "$<{*%@?"  # ?: the rest of Compose's ${VAR:?message}
        or value.startswith("...")
        or value.endswith("...")
        or value.lower() in PLACEHOLDER_WORDS
        or value in {"null", "None", "true", "false"}
        or (code and not quoted and re.fullmatch(r"[A-Za-z_][\w.]*(?:\(.*)?", value) is not None)
    )


def _findings(path: str, text: str) -> list[str]:
    found = []
    code = path.endswith(".py")
    for rule, pattern in RULES.items():
        for match in pattern.finditer(text):
            value = match.group(1)
            quoted = match.start(1) > 0 and text[match.start(1) - 1] in "\"'"
            if rule not in ("private key", "vgate API key") and _is_placeholder(
                value, quoted, code
            ):
                continue
            if (path, value) in ALLOWED:
                continue
            if path.startswith(FIXTURE_DIRS) and any(m in value for m in FAKE_MARKERS):
                continue
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{path}:{line}: {rule}: {value[:6]}...")
    return found


def test_no_secret_value_is_committed() -> None:
    files = _committable_files()
    assert "deploy/k8s/overlays/cpu-dev/kustomization.yaml" in files  # the listing works
    found: list[str] = []
    for path in files:
        if path.endswith(".lock"):
            continue  # hash-pinned requirements: sha256 digests, nothing else
        try:
            text = (ROOT / path).read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary
        found += _findings(path, text)
    assert not found, "secret-looking values (use a placeholder or the environment):\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize(
    "line",
    [
        "      - admin-key=dev-admin-key-0123456789",
        'VGATE_AUTH__ADMIN_KEY: "c2f1e0b8a4d6f7e9-0123456789"',
        "GF_SECURITY_ADMIN_PASSWORD=hunter2-0123456789",
        "      GF_SECURITY_ADMIN_PASSWORD: admin",
        "url: redis://gateway:4d1006225978f57c0123456789@vgate-redis:6379/0",
        "redis://:Tr0ub4dor0123456789@redis:6379/0",
        "command: redis-server --requirepass s3cretive0123456789",
        "user gateway on >clear-text-0123456789 ~vgate:* +@all",
        'db_password = "correct-horse-0123456789"',
        "-----BEGIN OPENSSH " + "PRIVATE KEY-----",
        "key: sk-vg-" + "A" * 43,
    ],
)
def test_the_search_finds_each_kind_of_secret(line: str) -> None:
    assert _findings("deploy/example.yaml", line)
    if "0123456789" in line:  # fixtures may hold visibly fake values, deploy/ may not
        assert not _findings("tests/integration/test_example.yaml", line)


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("deploy/x.yml", "VGATE_AUTH__ADMIN_KEY: ${VGATE_ADMIN_KEY:?set VGATE_ADMIN_KEY}"),
        ("deploy/x.yml", "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:?set it}"),
        ("deploy/x.sh", '  redis-url: "redis://gateway:$gateway@vgate-redis:6379/0"'),
        ("deploy/x.sh", "#   redis-url  redis://gateway:...@vgate-redis:6379/0"),
        ("README.md", "Give Redis a password (`redis://:password@host:6379/0`)"),
        ("deploy/x.acl", "user gateway on #@REDIS_GATEWAY_PASSWORD_SHA256@ ~vgate:rl:* +get"),
        ("deploy/x.yaml", "            - name: VGATE_AUTH__ADMIN_KEY"),
        ("README.md", "  admin_key: null          # Bearer key for /admin/keys"),
        ("gateway/x.py", "    admin_key = state.settings.auth.admin_key"),
        ("gateway/x.py", "    admin_key = app_state(request).settings.auth.admin_key"),
        ("tests/x.py", '        "auth": {"enabled": True, "admin_key": ADMIN_KEY},'),
        ("gateway/x.py", "secret, record = new_key(request.name)"),
    ],
)
def test_placeholders_and_references_pass(path: str, line: str) -> None:
    assert not _findings(path, line)
