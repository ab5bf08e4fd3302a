"""Settings: env over TOML over defaults; the example config documents every setting."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "gateway.example.toml"


def test_example_config_documents_every_setting() -> None:
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#? ?([a-z_][a-z0-9_]*) = ", text, re.MULTILINE))
    assert set(Settings.model_fields) - documented == set()


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.load(EXAMPLE)
    assert settings.port == 8888 and settings.default_limits.memory_mb == 512


def test_environment_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "g.toml"
    config.write_text('port = 9000\nidle_timeout_s = 5\n')
    monkeypatch.setenv("GATEWAY_PORT", "9001")
    settings = Settings.load(config)
    assert settings.port == 9001 and settings.idle_timeout_s == 5


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('prot = 9000\n')
    with pytest.raises(pydantic.ValidationError):
        Settings.load(config)
    with pytest.raises(pydantic.ValidationError):
        Settings(default_timeout_s=float("nan"))
    with pytest.raises(pydantic.ValidationError):
        Settings(runtime_dir=Path("/tmp/" + "x" * 100))


def test_token_is_secret_in_repr() -> None:
    assert "hunter2hunter2" not in repr(Settings(token="hunter2hunter2"))


def test_advertised_url_reaches_this_replica() -> None:
    import socket

    assert Settings(host="127.0.0.1", port=9000).advertised_url == "http://127.0.0.1:9000"
    assert Settings(host="0.0.0.0", port=9000).advertised_url == (
        f"http://{socket.gethostname()}:9000")
    assert Settings(internal_url="http://gw-1:8888/").advertised_url == "http://gw-1:8888"
    for bad in ("gw-1:8888", "ftp://gw-1", "http://gw-1/path", "http://gw 1"):
        with pytest.raises(pydantic.ValidationError):
            Settings(internal_url=bad)


def run_gateway(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m gateway`` with only ``env`` (and PATH); returns once it exits."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={"PATH": os.environ.get("PATH", os.defpath), **env})


def test_settings_errors_never_print_secret_values(tmp_path: Path) -> None:
    secret = "hunter2-" + secrets.token_hex(8)
    config = tmp_path / "g.toml"
    config.write_text(f'tokn = "{secret}"\nredis_password = 5\n')  # a typo; a wrong type
    cases = [
        run_gateway(env={"GATEWAY_TOKEN": secret, "GATEWAY_LEASE_RENEW_S": "20"}),
        run_gateway("--config", str(config), env={}),
        run_gateway(env={"GATEWAY_TOKEN": secret, "GATEWAY_PORT": secret}),
    ]
    for done, says in zip(cases, ["lease_renew_s", "tokn", "port"], strict=True):
        assert done.returncode == 2, done.stderr
        assert says in done.stderr
        assert secret[:6] not in done.stdout + done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_seccomp_profile_must_be_a_json_profile(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    for content in ("not json", '{"syscalls": []}'):
        bad.write_text(content)
        with pytest.raises(pydantic.ValidationError, match="seccomp profile"):
            Settings(docker_seccomp_profile=bad)
    with pytest.raises(pydantic.ValidationError, match="seccomp profile"):
        Settings(docker_seccomp_profile=tmp_path / "missing.json")
    from gateway.launchers.docker import SECCOMP_PROFILE

    assert Settings(docker_seccomp_profile=SECCOMP_PROFILE).docker_seccomp_profile
