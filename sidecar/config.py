"""One frozen, validated `Settings` object built from flags > SIDECAR_* env > TOML file > defaults.

Every option is declared once in `OPTIONS` (sidecar.options, with the value types and parsers,
re-exported here: `sidecar.config` is the entry point); the CLI flags, the environment names,
the TOML keys and the README's reference table all come from that list. A bad value raises
`ConfigError` with one line naming the option the way the user wrote it (flag, variable or key).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sidecar.errors import ConfigError
from sidecar.options import (
    LOOPBACK,
    OPTIONS,
    OPTIONS_BY_ATTR,
    HostPort,
    IPNetwork,
    Option,
    Upstream,
    grpc_health_service,
    parse_app_url,
    parse_cidr,
    parse_count,
    parse_curve,
    parse_health_path,
    parse_host_port,
    parse_http_url,
    parse_instance_id,
    parse_log_format,
    parse_name,
    parse_percent,
    parse_positive_seconds,
    parse_registry,
    parse_seconds,
    parse_text,
    parse_upstream,
    parse_weight,
)

__all__ = [
    "LOOPBACK",
    "OPTIONS",
    "OPTIONS_BY_ATTR",
    "HostPort",
    "IPNetwork",
    "Option",
    "Settings",
    "Upstream",
    "default_state_dir",
    "grpc_health_service",
    "load_settings",
    "parse_app_url",
    "parse_cidr",
    "parse_curve",
    "parse_health_path",
    "parse_host_port",
    "parse_http_url",
    "parse_instance_id",
    "parse_log_format",
    "parse_name",
    "parse_percent",
    "parse_positive_seconds",
    "parse_registry",
    "parse_seconds",
    "parse_text",
    "parse_upstream",
    "parse_weight",
]


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
    body_timeout: float
    app_timeout: float | None
    upstream_timeout: float
    stop_timeout: float
    command: tuple[str, ...] = field(default=())
    warmup_mode: str = "time"  # --warmup-mode: time or latency (sidecar.provider.warming)
    warmup_min_requests: int = 100

    @property
    def app_h2c(self) -> bool:
        """The app speaks HTTP/2 with prior knowledge (`--app h2c://`), not HTTP/1.1."""
        return self.app is not None and urlsplit(self.app).scheme == "h2c"

    @property
    def app_health_grpc(self) -> str | None:
        """The service `--app-health grpc[:SERVICE]` checks ('' for the whole server); None when
        the app's health is a path (or not checked)."""
        return grpc_health_service(self.app_health)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "graceful-sidecar"


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _may_share_port(a: str, b: str) -> bool:
    """Two binds on one port conflict unless they are distinct, specific IP addresses (a name
    such as localhost may resolve to either, so it counts as a conflict)."""
    try:
        first, second = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    return first != second and not first.is_unspecified and not second.is_unspecified


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
    sources: dict[str, str] = {}  # how the user wrote each option, for error messages
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
        sources[option.attr] = source or option.flag

    if values["service"] is None:
        raise ConfigError("--service is required (or SIDECAR_SERVICE, or service in the --config file)")
    # A wildcard bind is no address another process can call, and what the host name resolves to
    # is a guess (127.0.1.1 on Debian): the published addresses must be given.
    listen: HostPort | None = values["listen"]
    admin: HostPort = values["admin"]
    for bind, published, needed in (
        ("listen", "advertise", "HOST:PORT"),
        ("admin", "advertise_admin", "URL"),
    ):
        address = values[bind]
        if address is not None and _is_wildcard(address.host) and values[published] is None:
            raise ConfigError(
                f"{sources[bind]}: {address} binds every interface; give --{published.replace('_', '-')} "
                f"{needed}, the address other hosts reach it at"
            )
    if values["advertise"] is None and listen is not None:
        values["advertise"] = listen
    if values["advertise_admin"] is None:
        values["advertise_admin"] = f"http://{admin}"
    if values["instance_id"] is None:
        port = values["advertise"].port if values["advertise"] else admin.port
        default_id = f"{values['service']}-{socket.gethostname()}-{port}"
        try:  # sethostname(2) takes any bytes: a host name may hold what an id may not
            values["instance_id"] = parse_instance_id(default_id)
        except ValueError as exc:
            raise ConfigError(
                f"--instance-id: the default <service>-<host>-<port> cannot be used: {exc}"
            ) from None
    if values["registry"] is None:
        values["registry"] = f"sqlite://{default_state_dir() / 'registry.db'}"  # made if missing
    elif (missing := _missing_sqlite_dir(values["registry"])) is not None:
        # Created silently, a typo in the path would leave two sidecars in two registries.
        raise ConfigError(
            f"{sources['registry']} {values['registry']}: the directory {missing} does not exist"
        )
    if values["log_format"] is None:
        values["log_format"] = "text" if os.isatty(2) else "json"
    if values["listen"] is not None and values["app"] is None:
        raise ConfigError("--listen needs --app: the inbound proxy forwards to the application")
    if (
        values["app"] is not None
        and grpc_health_service(values["app_health"]) is not None
        and urlsplit(values["app"]).scheme != "h2c"
    ):
        # Kubernetes' grpc probe works on any port, but the sidecar speaks HTTP/1.1 to an http://
        # app: a gRPC server behind it would get no call through.
        raise ConfigError(
            f"{sources['app_health']} {values['app_health']} needs {sources['app']} h2c://HOST:PORT:"
            f" gRPC speaks HTTP/2, and {values['app']} is spoken to in HTTP/1.1"
        )
    if values["warmup_mode"] == "latency" and not values["warmup"]:
        raise ConfigError(
            f"{sources['warmup_mode']} latency needs {sources['warmup']} SEC, its upper bound"
            " (0 turns warmup off)"
        )
    if values["quiet_period"] >= values["drain_timeout"]:
        raise ConfigError(
            f"{sources['quiet_period']} {values['quiet_period']:g} must be below "
            f"{sources['drain_timeout']} {values['drain_timeout']:g}: a drain could never end quiet"
        )
    values["upstream"] = tuple(values["upstream"])
    names = [upstream.service for upstream in values["upstream"]]
    if duplicated := sorted({name for name in names if names.count(name) > 1}):
        raise ConfigError(f"--upstream: {duplicated[0]} is given more than once")
    binds = [(f"{sources['listen']} {listen}", listen), (f"{sources['admin']} {admin}", admin)]
    binds += [(f"{sources['upstream']} {u.service}={u.listen}", u.listen) for u in values["upstream"]]
    for index, (first_name, first) in enumerate(binds):
        for second_name, second in binds[index + 1 :]:
            if (
                first
                and second
                and first.port == second.port
                and not _may_share_port(first.host, second.host)
            ):
                raise ConfigError(
                    f"{first_name} and {second_name} share port {first.port}: each needs its own"
                )
    values["allow"] = tuple(values["allow"])
    return Settings(**values, command=tuple(command))


def _missing_sqlite_dir(registry: str) -> Path | None:
    """The directory of an explicit sqlite:// registry file, when it does not exist."""
    parts = urlsplit(registry)
    if parts.scheme != "sqlite" or not parts.path.startswith("/"):
        return None  # not SQLite, or not a path the adapter accepts: it says so itself
    directory = Path(unquote(parts.path)).parent
    return None if directory.is_dir() else directory


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
    names = [option.name for option in OPTIONS]
    known = set(names) | {option.attr for option in OPTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        near = difflib.get_close_matches(unknown[0].replace("_", "-"), names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"--config {path}: unknown key {unknown[0]!r}{hint}")
    # Accept both spellings of a key: drain-timeout and drain_timeout.
    values = {key.replace("_", "-"): value for key, value in data.items()}
    for option in OPTIONS:
        if option.name in values:
            _check_toml_type(option, values[option.name], path)
    return values


# The TOML type each option's value must have; anything else (a bool, a table, a date, a
# string for a number) is a mistake that str() would hide or garble.
_NUMERIC = (parse_seconds, parse_positive_seconds, parse_curve, parse_percent)
_TOML_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", dict: "a table"}


def _check_toml_type(option: Option, value: Any, path: str) -> None:
    if isinstance(value, list) and not option.repeatable:
        return  # _parse says "expected one value, got a list"
    types: tuple[type, ...]
    if option.parse in (parse_weight, parse_count):
        wanted, types = "an integer", (int,)
    elif option.parse in _NUMERIC:
        wanted, types = "a number", (int, float)
    else:
        wanted, types = "a string", (str,)
    for item in value if isinstance(value, list) else [value]:
        if type(item) not in types:  # type(), not isinstance(): a bool is an int to Python
            found = _TOML_NAMES.get(type(item), "a list" if isinstance(item, list) else "a date/time")
            more = " (or a list of them)" if option.repeatable else ""
            raise ConfigError(f"{option.name} in {path}: expected {wanted}{more}, got {found} {item!r}")
