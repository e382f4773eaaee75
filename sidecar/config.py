"""One frozen, validated `Settings` object built from flags > SIDECAR_* env > TOML file > defaults.

Every option is declared once in `OPTIONS`; the CLI flags, the environment names, the TOML keys
and the README's reference table all come from that list. A bad value raises `ConfigError` with
one line naming the option the way the user wrote it (flag, variable or key).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Upstream:
    service: str
    listen: HostPort


# --- value parsers: each takes the raw text and returns the value or raises ValueError(reason)


def parse_host_port(text: str) -> HostPort:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    port = _int_in(port_text, 1, 65535, what="port")
    return HostPort(host, port)


def parse_http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    return text.strip().rstrip("/")


def _float_in(text: str, low: float, high: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None
    if not low <= value <= high:  # also rejects nan
        raise ValueError(f"expected {what} between {low:g} and {high:g}, got {text!r}")
    return value


def parse_seconds(text: str) -> float:
    return _float_in(text, 0, 86400, "seconds")


def parse_positive_seconds(text: str) -> float:
    seconds = parse_seconds(text)
    if seconds <= 0:
        raise ValueError(f"expected seconds above 0, got {text!r}")
    return seconds


def _int_in(text: str, low: int, high: int, *, what: str = "an integer") -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"expected {what} in {low}..{high}, got {text!r}") from None
    if not low <= value <= high:
        raise ValueError(f"expected {what} in {low}..{high}, got {value}")
    return value


def parse_weight(text: str) -> int:
    return _int_in(text, 1, 65535)


def parse_curve(text: str) -> float:
    return _float_in(text, 0.1, 10, "an exponent")


def parse_percent(text: str) -> float:
    return _float_in(text, 0, 100, "a percentage")


def parse_upstream(text: str) -> Upstream:
    name, sep, address = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"expected NAME=HOST:PORT, got {text!r}")
    return Upstream(name.strip(), parse_host_port(address))


def parse_cidr(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"expected an IP address or CIDR block, got {text!r}") from None


def parse_log_format(text: str) -> str:
    if text not in ("json", "text"):
        raise ValueError(f"expected json or text, got {text!r}")
    return text


def parse_text(text: str) -> str:
    return text


def parse_health_path(text: str) -> str:
    if text and (not text.startswith("/") or not text.isprintable() or " " in text):
        raise ValueError(f"expected a path such as /health (or '' to disable), got {text!r}")
    return text


def parse_name(text: str) -> str:
    text = text.strip()
    if not text or len(text) > 200 or any(c.isspace() or c == "/" for c in text):
        raise ValueError(f"expected a name without spaces or '/', got {text!r}")
    return text


def parse_registry(text: str) -> str:
    if "://" not in text:
        raise ValueError(f"expected a URL such as consul://127.0.0.1:8500 or sqlite:///path.db, got {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # the flag without dashes: "drain-timeout"
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = ""
    repeatable: bool = False

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def env(self) -> str:
        return "SIDECAR_" + self.name.upper().replace("-", "_")

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("service", parse_name, None, "service name to register (required)", "NAME"),
    Option("instance-id", parse_name, None, "unique instance id (default <service>-<host>-<port>)", "ID"),
    Option("listen", parse_host_port, None, "inbound proxy address: what consumers call", "HOST:PORT"),
    Option(
        "advertise",
        parse_host_port,
        None,
        "address published in the registry (default: --listen)",
        "HOST:PORT",
    ),
    Option("app", parse_http_url, None, "the application behind the inbound proxy", "URL"),
    Option(
        "app-health",
        parse_health_path,
        "/health",
        "health path polled until 2xx before registering; '' disables",
        "PATH",
    ),
    Option("admin", parse_host_port, HostPort("127.0.0.1", 16688), "admin API address", "HOST:PORT"),
    Option(
        "advertise-admin", parse_http_url, None, "admin base URL other sidecars use to reach this one", "URL"
    ),
    Option(
        "registry", parse_registry, None, "consul://host:8500 or sqlite:///path.db (default: embedded)", "URL"
    ),
    Option("register-delay", parse_seconds, 0.0, "wait after the app is healthy before registering", "SEC"),
    Option("warmup", parse_seconds, 0.0, "warmup window after registration (0 = off)", "SEC"),
    Option("warmup-curve", parse_curve, 2.0, "weight = base x (t/T)^X during warmup", "X"),
    Option("warmup-min-percent", parse_percent, 10.0, "floor of the warmup weight, in percent of base", "P"),
    Option("weight", parse_weight, 100, "base weight, 1..65535", "N"),
    Option("drain-timeout", parse_seconds, 25.0, "upper bound of a drain", "SEC"),
    Option(
        "quiet-period",
        parse_seconds,
        1.0,
        "a drain ends once idle and no request arrived for this long",
        "SEC",
    ),
    Option(
        "upstream", parse_upstream, (), "consumer side: NAME=HOST:PORT (repeatable)", "NAME=HOST:PORT", True
    ),
    Option("token", parse_text, None, "bearer token accepted on mutating admin endpoints", "T"),
    Option("allow", parse_cidr, LOOPBACK, "callers allowed without a token (repeatable)", "CIDR", True),
    Option("log-format", parse_log_format, None, "json or text (default: text on a TTY, else json)", "FMT"),
    Option(
        "header-timeout",
        parse_positive_seconds,
        10.0,
        "a client connection must send a complete request head within this",
        "SEC",
    ),
    Option(
        "idle-timeout",
        parse_positive_seconds,
        60.0,
        "idle keep-alive client connections are closed after this (at once while draining)",
        "SEC",
    ),
    Option(
        "app-timeout",
        parse_positive_seconds,
        None,
        "the app may stay silent this long while it owes a response; then 504 (default: no limit)",
        "SEC",
    ),
    Option("stop-timeout", parse_seconds, 10.0, "exec mode: SIGTERM to SIGKILL of the child", "SEC"),
)
OPTIONS_BY_ATTR = {option.attr: option for option in OPTIONS}


@dataclass(frozen=True, slots=True)
class Settings:
    service: str
    instance_id: str
    listen: HostPort | None
    advertise: HostPort | None
    app: str | None
    app_health: str
    admin: HostPort
    advertise_admin: str
    registry: str
    register_delay: float
    warmup: float
    warmup_curve: float
    warmup_min_percent: float
    weight: int
    drain_timeout: float
    quiet_period: float
    upstream: tuple[Upstream, ...]
    token: str | None
    allow: tuple[IPNetwork, ...]
    log_format: str
    header_timeout: float
    idle_timeout: float
    app_timeout: float | None
    stop_timeout: float
    command: tuple[str, ...] = field(default=())


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "graceful-sidecar"


def _reachable_host(host: str) -> str:
    """A wildcard bind address is not something another process can call: publish this
    host's address instead (in Kubernetes, pass --advertise with the pod IP)."""
    if host in ("0.0.0.0", "::", ""):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return host


def load_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    command: Sequence[str] = (),
) -> Settings:
    """`flags` maps option attrs to the raw strings given on the command line (absent = not given;
    a list for repeatable options) plus an optional "config" path."""
    env = os.environ if env is None else env
    file_values: dict[str, Any] = {}
    config_path = flags.get("config") or env.get("SIDECAR_CONFIG")
    if config_path:
        file_values = _read_toml(str(config_path))

    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw: Any = None
        source = ""
        if flags.get(option.attr) is not None:
            raw, source = flags[option.attr], option.flag
        elif option.env in env and not (option.repeatable and not env[option.env].strip()):
            # An empty list from the environment means "not set": an empty --allow would lock
            # every caller out, loopback included.
            raw, source = env[option.env], option.env
            if option.repeatable:
                raw = [part for part in raw.split(",") if part.strip()]
        elif option.name in file_values:
            raw, source = file_values[option.name], f"{option.name} in {config_path}"
        values[option.attr] = option.default if raw is None else _parse(option, raw, source)

    if values["service"] is None:
        raise ConfigError("--service is required (or SIDECAR_SERVICE, or service in the --config file)")
    if values["advertise"] is None and values["listen"] is not None:
        listen: HostPort = values["listen"]
        values["advertise"] = HostPort(_reachable_host(listen.host), listen.port)
    admin: HostPort = values["admin"]
    if values["advertise_admin"] is None:
        values["advertise_admin"] = f"http://{HostPort(_reachable_host(admin.host), admin.port)}"
    if values["instance_id"] is None:
        port = values["advertise"].port if values["advertise"] else admin.port
        values["instance_id"] = f"{values['service']}-{socket.gethostname()}-{port}"
    if values["registry"] is None:
        values["registry"] = f"sqlite://{default_state_dir() / 'registry.db'}"
    if values["log_format"] is None:
        values["log_format"] = "text" if os.isatty(2) else "json"
    if values["listen"] is not None and values["app"] is None:
        raise ConfigError("--listen needs --app: the inbound proxy forwards to the application")
    if values["listen"] is not None and values["listen"] == values["admin"]:
        raise ConfigError(f"--listen and --admin are both {values['admin']}: they need separate ports")
    values["upstream"] = tuple(values["upstream"])
    names = [upstream.service for upstream in values["upstream"]]
    if duplicated := sorted({name for name in names if names.count(name) > 1}):
        raise ConfigError(f"--upstream: {duplicated[0]} is given more than once")
    values["allow"] = tuple(values["allow"])
    return Settings(**values, command=tuple(command))


def _parse(option: Option, raw: Any, source: str) -> Any:
    if option.repeatable:
        items = raw if isinstance(raw, list) else [raw]
        try:
            return tuple(option.parse(str(item)) for item in items)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    if isinstance(raw, list):
        raise ConfigError(f"{source}: expected one value, got a list")
    try:
        return option.parse(str(raw))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    known = {option.name for option in OPTIONS} | {option.attr for option in OPTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown key {unknown[0]!r}")
    # Accept both spellings of a key: drain-timeout and drain_timeout.
    return {key.replace("_", "-"): value for key, value in data.items()}
