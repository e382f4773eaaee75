"""Settings: flags > SIDECAR_* env > TOML file > defaults, and one clear line per bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import HostPort, load_settings
from sidecar.errors import ConfigError

BASE = {"service": "svc", "listen": "127.0.0.1:8000", "app": "http://127.0.0.1:8080"}
# What the start says an id and a service name may hold (sidecar.options).
ID_RULE = "an instance id is 1..200 letters and digits (up to U+FFFF) and -._~!$&'()*+,;=:@%"
SERVICE_RULE = "a service name is 1..128 letters and digits (up to U+FFFF) and -._$"


def test_defaults() -> None:
    """Without options beyond the required ones, the design's defaults apply."""
    settings = load_settings(BASE, env={})
    assert settings.admin == HostPort("127.0.0.1", 16688)
    assert settings.advertise == HostPort("127.0.0.1", 8000)
    assert settings.advertise_admin == "http://127.0.0.1:16688"
    assert settings.weight == 100
    assert settings.drain_timeout == 25
    assert settings.quiet_period == 1
    assert settings.warmup == 0
    assert settings.warmup_curve == 2
    assert settings.warmup_min_percent == 10
    assert settings.app_health == "/health"
    assert settings.registry.startswith("sqlite://")
    assert settings.instance_id.startswith("svc-")
    assert settings.instance_id.endswith("-8000")


def test_precedence_flag_env_file(tmp_path: Path) -> None:
    """A flag beats the environment, which beats the TOML file, which beats the default."""
    config = tmp_path / "sidecar.toml"
    config.write_text('weight = 10\ndrain-timeout = 7\nquiet_period = 3\nupstream = ["a=127.0.0.1:9001"]\n')
    env = {"SIDECAR_WEIGHT": "20", "SIDECAR_DRAIN_TIMEOUT": "8"}
    settings = load_settings({**BASE, "config": str(config), "weight": "30"}, env=env)
    assert settings.weight == 30  # flag
    assert settings.drain_timeout == 8  # env
    assert settings.quiet_period == 3  # file, with the underscore spelling
    assert [u.service for u in settings.upstream] == ["a"]  # file list
    assert load_settings(BASE, env={"SIDECAR_CONFIG": str(config)}).weight == 10


def test_repeatable_options_from_env() -> None:
    """Repeatable options take a comma-separated list from the environment."""
    settings = load_settings(BASE, env={"SIDECAR_ALLOW": "10.0.0.0/8,192.168.1.7"})
    assert [str(network) for network in settings.allow] == ["10.0.0.0/8", "192.168.1.7/32"]


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"weight": "0"}, {}, "--weight: expected an integer in 1..65535, got 0"),
        ({"weight": "abc"}, {}, "--weight: expected an integer in 1..65535, got 'abc'"),
        ({}, {"SIDECAR_WEIGHT": "70000"}, "SIDECAR_WEIGHT: expected an integer in 1..65535, got 70000"),
        ({"drain_timeout": "-1"}, {}, "--drain-timeout: expected seconds between 0 and 86400"),
        ({"listen": "nope"}, {}, "--listen: expected HOST:PORT"),
        ({"listen": "127.0.0.1:99999"}, {}, "--listen: expected port in 1..65535"),
        ({"app": "ftp://x"}, {}, "--app: expected an http:// or https:// URL, or h2c://HOST:PORT"),
        ({"app": "h2c://127.0.0.1:5050/api"}, {}, "--app: h2c://HOST:PORT takes no path"),
        ({"app": "h2c://127.0.0.1"}, {}, "--app: expected h2c://HOST:PORT, got 'h2c://127.0.0.1'"),
        ({"app": "h2c://127.0.0.1:99999"}, {}, "--app: bad port in 'h2c://127.0.0.1:99999'"),
        ({"app_health": "grpc:"}, {}, "--app-health: expected grpc:SERVICE with a service name"),
        ({"app_health": "grpc:a b"}, {}, "--app-health: expected grpc:SERVICE with a service name"),
        ({"app_health": "grpc"}, {}, "--app-health grpc needs --app h2c://HOST:PORT"),
        (
            {},
            {"SIDECAR_APP_HEALTH": "grpc:cart"},
            "SIDECAR_APP_HEALTH grpc:cart needs --app h2c://HOST:PORT: gRPC speaks HTTP/2,"
            " and http://127.0.0.1:8080 is spoken to in HTTP/1.1",
        ),
        ({"allow": ["10.0.0.0/33"]}, {}, "--allow: expected an IP address or CIDR block"),
        ({"upstream": ["nope"]}, {}, "--upstream: expected NAME=HOST:PORT"),
        ({"log_format": "xml"}, {}, "--log-format: expected json or text"),
        ({"warmup_curve": "0"}, {}, "--warmup-curve: expected an exponent between 0.1 and 10"),
        ({"registry": "localhost:8500"}, {}, "--registry: expected a URL"),
        ({"service": None}, {}, "--service is required"),
        ({"app": None}, {}, "--listen needs --app"),
        ({"app_health": "health"}, {}, "--app-health: expected a path such as /health, grpc or grpc:SERVICE"),
        ({"upstream": ["a=127.0.0.1:1", "a=127.0.0.1:2"]}, {}, "--upstream: a is given more than once"),
        ({"listen": "0.0.0.0:8000"}, {}, "--listen: 0.0.0.0:8000 binds every interface; give --advertise"),
        ({"listen": "[::]:8000"}, {}, "--listen: [::]:8000 binds every interface; give --advertise"),
        (
            {},
            {"SIDECAR_ADMIN": "0.0.0.0:16688"},
            "SIDECAR_ADMIN: 0.0.0.0:16688 binds every interface; give --advertise-admin",
        ),
        ({"quiet_period": "25"}, {}, "--quiet-period 25 must be below --drain-timeout 25"),
        ({"drain_timeout": "0.5"}, {}, "--quiet-period 1 must be below --drain-timeout 0.5"),
        (
            {"admin": "127.0.0.1:8000"},
            {},
            "--listen 127.0.0.1:8000 and --admin 127.0.0.1:8000 share port 8000",
        ),
        (
            {"admin": "0.0.0.0:8000", "advertise_admin": "http://10.0.0.1:8000"},
            {},
            "--listen 127.0.0.1:8000 and --admin 0.0.0.0:8000 share port 8000",
        ),
        (
            {"upstream": ["b=localhost:16688"]},
            {},
            "--admin 127.0.0.1:16688 and --upstream b=localhost:16688 share port 16688",
        ),
        ({"instance_id": "a b"}, {}, f"--instance-id: 'a b' holds ' ' (U+0020) at 2; {ID_RULE}"),
        ({"instance_id": "a/b"}, {}, f"--instance-id: 'a/b' holds '/' (U+002F) at 2; {ID_RULE}"),
        ({"instance_id": "{{POD}}"}, {}, f"--instance-id: '{{{{POD}}}}' holds '{{' (U+007B) at 1; {ID_RULE}"),
        ({"instance_id": "a\x7fb"}, {}, f"--instance-id: 'a\\x7fb' holds '\\x7f' (U+007F) at 2; {ID_RULE}"),
        (
            {"instance_id": "id-\U00020000"},
            {},
            "--instance-id: 'id-\U00020000' holds '\U00020000' (U+20000)",
        ),
        (
            {"instance_id": ".."},
            {},
            f"--instance-id: '..' is a path step to ZooKeeper and in URLs; {ID_RULE}",
        ),
        ({"instance_id": "i" * 201}, {}, f"--instance-id: {ID_RULE}; got 201 characters: '{'i' * 40}...'"),
        (
            {},
            {"SIDECAR_INSTANCE_ID": "a?b"},
            f"SIDECAR_INSTANCE_ID: 'a?b' holds '?' (U+003F) at 2; {ID_RULE}",
        ),
        ({"service": "a&b"}, {}, f"--service: 'a&b' holds '&' (U+0026) at 2; {SERVICE_RULE}"),
        ({"service": "a:b"}, {}, f"--service: 'a:b' holds ':' (U+003A) at 2; {SERVICE_RULE}"),
        ({"service": "s" * 129}, {}, f"--service: {SERVICE_RULE}; got 129 characters"),
        (
            {"upstream": ["a%b=127.0.0.1:9001"]},
            {},
            f"--upstream: 'a%b' holds '%' (U+0025) at 2; {SERVICE_RULE}",
        ),
    ],
)
def test_bad_values_name_the_option(flags: dict[str, object], env: dict[str, str], message: str) -> None:
    """Each bad value raises ConfigError whose one-line message names the option as written."""
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, **flags}, env=env)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_an_h2c_app_with_the_grpc_health_check() -> None:
    """--app h2c://HOST:PORT is an HTTP/2 app (app_h2c), with or without a trailing slash;
    --app-health grpc and grpc:SERVICE name the service the gRPC check asks for; http:// is not h2c."""
    settings = load_settings({**BASE, "app": "H2C://[::1]:5050/", "app_health": "grpc"}, env={})
    assert (settings.app, settings.app_h2c, settings.app_health_grpc) == ("h2c://[::1]:5050", True, "")
    env = {"SIDECAR_APP": "h2c://127.0.0.1:5050", "SIDECAR_APP_HEALTH": "grpc:shop.Cart"}
    settings = load_settings({**BASE, "app": None}, env=env)
    assert (settings.app_h2c, settings.app_health_grpc) == (True, "shop.Cart")
    settings = load_settings({**BASE, "app": "h2c://127.0.0.1:5050", "app_health": "/healthz"}, env={})
    assert (settings.app_h2c, settings.app_health_grpc) == (True, None)
    plain = load_settings(BASE, env={})
    assert (plain.app_h2c, plain.app_health_grpc) == (False, None)
    assert load_settings({**BASE, "app_health": ""}, env={}).app_health_grpc is None


def test_every_character_a_name_may_hold_is_taken() -> None:
    """Ids with `&`, `%`, `=`, `:`, `+`, every punctuation mark allowed and letters of any script,
    up to 200 characters, and service names of DNS, Java or other scripts' letters, up to 128,
    start as given (and as upstream names)."""
    for instance_id in ("a&b=c%25:d+e", "-._~!$&'()*+,;=:@%", "zoë-東京-n\u0303", "é&%=:+名" * 28 + "é&%="):
        assert load_settings({**BASE, "instance_id": instance_id}, env={}).instance_id == instance_id
    for service in ("org.example.Demo$Inner", "orders-v2_eu", "注文", "s" * 128):
        settings = load_settings(
            {**BASE, "service": service, "upstream": [f"{service}=127.0.0.1:9001"]}, env={}
        )
        assert (settings.service, settings.upstream[0].service) == (service, service)


def test_default_id_from_an_unusable_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host name that makes the default id <service>-<host>-<port> unusable stops the start
    with one line naming --instance-id."""
    monkeypatch.setattr("socket.gethostname", lambda: "build box")
    with pytest.raises(ConfigError) as caught:
        load_settings(BASE, env={})
    assert str(caught.value).startswith(
        "--instance-id: the default <service>-<host>-<port> cannot be used: 'svc-build box-8000' holds ' '"
    )


def test_wildcard_binds_with_published_addresses() -> None:
    """A wildcard --listen and --admin are fine once --advertise and --advertise-admin say where
    to reach them; distinct specific addresses may share a port."""
    flags = {**BASE, "listen": "0.0.0.0:8000", "advertise": "10.0.0.5:8000", "admin": "0.0.0.0:16688"}
    settings = load_settings({**flags, "advertise_admin": "http://10.0.0.5:16688"}, env={})
    assert settings.advertise == HostPort("10.0.0.5", 8000)
    assert settings.advertise_admin == "http://10.0.0.5:16688"
    assert load_settings({**BASE, "admin": "127.0.0.2:8000"}, env={}).admin.port == 8000


def test_empty_list_from_env_is_unset() -> None:
    """SIDECAR_ALLOW= (empty) keeps the loopback default instead of locking every caller out."""
    assert load_settings(BASE, env={"SIDECAR_ALLOW": ""}).allow == load_settings(BASE, env={}).allow


def test_bad_config_file(tmp_path: Path) -> None:
    """An unknown key or broken TOML in --config is named in the error."""
    config = tmp_path / "bad.toml"
    config.write_text("wieght = 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'wieght' \(did you mean 'weight'\?\)"):
        load_settings({**BASE, "config": str(config)}, env={})
    config.write_text("drain_timout = 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'drain_timout' \(did you mean 'drain-timeout'\?\)"):
        load_settings({**BASE, "config": str(config)}, env={})
    config.write_text("weight = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({**BASE, "config": str(config)}, env={})
    config.write_bytes(b"weight = 5 # \xff\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({**BASE, "config": str(config)}, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({**BASE, "config": str(tmp_path / "missing.toml")}, env={})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("weight = true", "weight in {path}: expected an integer, got a boolean True"),
        ("weight = 1.5", "weight in {path}: expected an integer, got a float 1.5"),
        ('drain-timeout = "25"', "drain-timeout in {path}: expected a number, got a string '25'"),
        ("service = 5", "service in {path}: expected a string, got an integer 5"),
        ("upstream = [1]", "upstream in {path}: expected a string (or a list of them), got an integer 1"),
        ("[listen]\nhost = 'x'", "listen in {path}: expected a string, got a table"),
        ("warmup = 1979-05-27", "warmup in {path}: expected a number, got a date/time"),
    ],
)
def test_config_file_wrong_type(tmp_path: Path, toml: str, message: str) -> None:
    """A TOML value of the wrong type is named with the type expected and the type found."""
    config = tmp_path / "typed.toml"
    config.write_text(toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, "config": str(config)}, env={})
    assert str(caught.value).startswith(message.format(path=config))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--service", "s", "--weight", "abc"], "graceful-sidecar: --weight: expected an integer"),
        (["run", "--service", "s", "--registry", "consol://x:1"], "did you mean consul://?"),
        (["run"], "--service is required"),
        (["exec", "--service", "s"], "missing '-- CMD"),
        (["run", "--service", "s", "--admin", "0.0.0.0:16999"], "give --advertise-admin URL"),
        (["run", "--service", "s", "--quiet-period", "5", "--drain-timeout", "2"], "must be below"),
        (
            ["run", "--service", "s", "--instance-id", "pod 7"],
            "graceful-sidecar: --instance-id: 'pod 7' holds ' '",
        ),
        (["run", "--service", "a/b"], "graceful-sidecar: --service: 'a/b' holds '/' (U+002F) at 2"),
        (
            [
                "run",
                "--service",
                "s",
                "--listen",
                "127.0.0.1:1",
                "--app",
                "http://127.0.0.1:2",
                "--app-health",
                "grpc",
            ],
            "graceful-sidecar: --app-health grpc needs --app h2c://HOST:PORT",
        ),
        (
            ["run", "--service", "s", "--listen", "127.0.0.1:1", "--app", "h2c://127.0.0.1:2/v1"],
            "graceful-sidecar: --app: h2c://HOST:PORT takes no path",
        ),
    ],
)
def test_cli_rejects_bad_options_with_one_line(argv: list[str], message: str) -> None:
    """The real command exits 2 with one line on stderr naming the problem, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", *argv], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_cli_reports_busy_port(tmp_path: Path) -> None:
    """An admin port already in use: exit 1 with one line naming --admin."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "sidecar", "run", "--service", "s", "--admin", f"127.0.0.1:{port}",
             "--registry", f"sqlite://{tmp_path / 'r.db'}", "--log-format", "json"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"--admin 127.0.0.1:{port}: cannot listen" in done.stderr
    assert "Traceback" not in done.stderr
