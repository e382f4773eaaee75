"""Every option the sidecar takes, declared once: its name, value parser, default and help.

The CLI flags, the SIDECAR_* environment names, the TOML keys and the README's reference table
all come from `OPTIONS` (sidecar.config builds the `Settings` from them). A parser takes the raw
text and returns the value, or raises ValueError with the reason; the caller adds the option's
name the way the user wrote it. A foundation module: the standard library, sidecar.errors and
sidecar.protocol only.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sidecar.protocol.metadata import DEFAULT_WEIGHT, MAX_WEIGHT
from sidecar.protocol.warmup import CURVE_RANGE, DEFAULT_CURVE, DEFAULT_MIN_PERCENT, MIN_PERCENT_RANGE

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


def parse_app_url(text: str) -> str:
    """--app: an http:// or https:// URL (HTTP/1.1, a path prefix allowed), or h2c://HOST:PORT
    (HTTP/2 with prior knowledge, what every gRPC server speaks). An h2c app takes no path: gRPC
    and HTTP/2 callers name the whole path, `/package.Service/Method`, and a prefix in front of it
    would reach no method."""
    parts = urlsplit(text.strip())
    if parts.scheme != "h2c":
        try:
            return parse_http_url(text)
        except ValueError as exc:
            if not str(exc).startswith("expected"):
                raise
            raise ValueError(
                f"expected an http:// or https:// URL, or h2c://HOST:PORT for HTTP/2 (gRPC), got {text!r}"
            ) from None
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not parts.hostname or port is None:
        raise ValueError(f"expected h2c://HOST:PORT, got {text!r}")
    if parts.path.strip("/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            f"h2c://HOST:PORT takes no path, query or user: callers name the whole path"
            f" (/package.Service/Method), got {text!r}"
        )
    return f"h2c://{parts.netloc}"


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
    return _int_in(text, 1, MAX_WEIGHT)


def parse_curve(text: str) -> float:
    return _float_in(text, *CURVE_RANGE, "an exponent")


def parse_percent(text: str) -> float:
    return _float_in(text, *MIN_PERCENT_RANGE, "a percentage")


# --warmup-mode: `time` (the clock curve) or `latency` (sidecar.provider.ramp)
WARMUP_MODES = ("time", "latency")
# --warmup-min-requests: a million requests is more than any warmup needs.
MAX_MIN_REQUESTS = 1_000_000


def parse_warmup_mode(text: str) -> str:
    if text not in WARMUP_MODES:
        raise ValueError(f"expected {' or '.join(WARMUP_MODES)}, got {text!r}")
    return text


def parse_count(text: str) -> int:
    return _int_in(text, 0, MAX_MIN_REQUESTS)


def parse_upstream(text: str) -> Upstream:
    name, sep, address = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"expected NAME=HOST:PORT, got {text!r}")
    return Upstream(parse_name(name), parse_host_port(address))


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


# --app-health grpc[:SERVICE]: the standard gRPC health check, grpc.health.v1.Health/Check, with
# SERVICE as the request's `service` (none: the server as a whole), as Kubernetes' grpc probe.
GRPC_HEALTH = "grpc"
# A gRPC service name is a protobuf full name (package.Service); 200 keeps the request small.
MAX_GRPC_SERVICE = 200


def parse_health_path(text: str) -> str:
    """--app-health: a path polled over HTTP, `grpc` or `grpc:SERVICE`, or '' (no check)."""
    if text == GRPC_HEALTH or text.startswith(GRPC_HEALTH + ":"):
        service = text[len(GRPC_HEALTH) + 1 :]
        if text != GRPC_HEALTH and (
            not service or len(service) > MAX_GRPC_SERVICE or not service.isprintable() or " " in service
        ):
            raise ValueError(
                f"expected grpc:SERVICE with a service name such as shop.Cart (1..{MAX_GRPC_SERVICE}"
                f" printable characters, no space), or grpc alone for the whole server, got {text!r}"
            )
        return text
    if text and (not text.startswith("/") or not text.isprintable() or " " in text):
        raise ValueError(
            f"expected a path such as /health, grpc or grpc:SERVICE (or '' to disable), got {text!r}"
        )
    return text


def grpc_health_service(app_health: str) -> str | None:
    """The service a `grpc[:SERVICE]` --app-health checks ('' for the whole server); None when
    it is no gRPC check."""
    if app_health == GRPC_HEALTH:
        return ""
    if app_health.startswith(GRPC_HEALTH + ":"):
        return app_health[len(GRPC_HEALTH) + 1 :]
    return None


# A service name and an instance id become keys in every registry: a Consul service and its id
# (also in the agent API's URL paths), an etcd key `PREFIX/SERVICE/ID` (kratos), a ZooKeeper node
# `/services/SERVICE/ID` (Curator), a Dubbo provider URL (the service raw as its path and
# `interface`, which Dubbo consumers match as written; the id percent-encoded in a parameter).
# A name may hold what all of them keep and read back as itself:
# - letters, marks and digits of any script in the Basic Multilingual Plane: ZooKeeper refuses a
#   node name with characters beyond U+FFFF (Java sees surrogates; PathUtils.validatePath);
# - in an instance id, the ASCII punctuation of a URL path segment (RFC 3986 pchar, with % taken
#   as itself), which every registry API and layout encodes. Spaces, controls, / (the path
#   separator everywhere) and the rest, " # < > ? [ \ ] ^ ` { | }, are refused: more often a
#   template left unrendered or a quoting slip than an id;
# - in a service name only . - _ $: DNS and Kubernetes names, Java interface names (Dubbo's),
#   nothing a Dubbo URL would have to encode;
# - never . or .. alone: a path step to ZooKeeper and in a URL path.
INSTANCE_ID_PUNCTUATION = "-._~!$&'()*+,;=:@%"
SERVICE_PUNCTUATION = "-._$"
# Small enough to keep every registry call and X-Sidecar-* header small; large enough for the
# default id of the longest service name.
MAX_INSTANCE_ID = 200
# The default id <service>-<host>-<port> (a Linux host name has 64 characters at most) then stays
# within MAX_INSTANCE_ID.
MAX_SERVICE_NAME = 128
_PATH_STEPS = (".", "..")


def _checked_name(text: str, what: str, punctuation: str, longest: int) -> str:
    text = text.strip()
    rule = f"{what} is 1..{longest} letters and digits (up to U+FFFF) and {punctuation}"
    if not 0 < len(text) <= longest:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(f"{rule}; got {len(text)} characters: {shown!r}")
    for position, char in enumerate(text, 1):
        if char not in punctuation and (ord(char) > 0xFFFF or unicodedata.category(char)[0] not in "LMN"):
            raise ValueError(f"{text!r} holds {char!r} (U+{ord(char):04X}) at {position}; {rule}")
    if text in _PATH_STEPS:
        raise ValueError(f"{text!r} is a path step to ZooKeeper and in URLs; {rule}")
    return text


def parse_name(text: str) -> str:
    """A service name (--service, the NAME of --upstream, inject's --service)."""
    return _checked_name(text, "a service name", SERVICE_PUNCTUATION, MAX_SERVICE_NAME)


def parse_instance_id(text: str) -> str:
    return _checked_name(text, "an instance id", INSTANCE_ID_PUNCTUATION, MAX_INSTANCE_ID)


def parse_registry(text: str) -> str:
    if "://" not in text:
        raise ValueError(
            "expected a URL such as consul://127.0.0.1:8500, etcd://127.0.0.1:2379,"
            " zookeeper://127.0.0.1:2181, eureka://127.0.0.1:8761/eureka, nacos://127.0.0.1:8848"
            " or sqlite:///path.db,"
            f" got {text!r}"
        )
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
    Option(
        "instance-id", parse_instance_id, None, "unique instance id (default <service>-<host>-<port>)", "ID"
    ),
    Option("listen", parse_host_port, None, "inbound proxy address: what consumers call", "HOST:PORT"),
    Option(
        "advertise",
        parse_host_port,
        None,
        "address published in the registry (default: --listen)",
        "HOST:PORT",
    ),
    Option(
        "app",
        parse_app_url,
        None,
        "the application behind the inbound proxy: http://HOST:PORT (HTTP/1.1) or h2c://HOST:PORT"
        " (HTTP/2 with prior knowledge: gRPC servers)",
        "URL",
    ),
    Option(
        "app-health",
        parse_health_path,
        "/health",
        "health path polled until 2xx before registering, or grpc[:SERVICE] for the gRPC health"
        " service (needs --app h2c://); '' disables",
        "PATH",
    ),
    Option("admin", parse_host_port, HostPort("127.0.0.1", 16688), "admin API address", "HOST:PORT"),
    Option(
        "advertise-admin", parse_http_url, None, "admin base URL other sidecars use to reach this one", "URL"
    ),
    Option(
        "registry",
        parse_registry,
        None,
        "consul://host:8500, etcd://host:2379[,host:2379...], zookeeper://host:2181[,...][/chroot][?layout=dubbo],"
        " eureka://host:8761/eureka[,...], nacos://host:8848[,...][?namespace=N&group=G]"
        " or sqlite:///path.db (default: embedded)",
        "URL",
    ),
    Option("register-delay", parse_seconds, 0.0, "wait after the app is healthy before registering", "SEC"),
    Option("warmup", parse_seconds, 0.0, "warmup window after registration (0 = off)", "SEC"),
    Option("warmup-curve", parse_curve, DEFAULT_CURVE, "weight = base x (t/T)^X during warmup", "X"),
    Option(
        "warmup-min-percent",
        parse_percent,
        DEFAULT_MIN_PERCENT,
        "floor of the warmup weight, in percent of base",
        "P",
    ),
    Option(
        "warmup-mode",
        parse_warmup_mode,
        "time",
        "time: the curve over --warmup; latency: the weight follows the app's latency and warmup ends"
        " once it has settled (--warmup is then the upper bound)",
        "MODE",
    ),
    Option(
        "warmup-min-requests",
        parse_count,
        100,
        "latency mode: never full weight before this many requests were served",
        "N",
    ),
    Option("weight", parse_weight, DEFAULT_WEIGHT, f"base weight, 1..{MAX_WEIGHT}", "N"),
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
    Option(
        "allow",
        parse_cidr,
        LOOPBACK,
        "callers allowed without a token (repeatable; replaces the default: list loopback too)",
        "CIDR",
        True,
    ),
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
        "body-timeout",
        parse_positive_seconds,
        60.0,
        "a client that stalls inside a request body, or stops reading a response, this long is closed",
        "SEC",
    ),
    Option(
        "app-timeout",
        parse_positive_seconds,
        None,
        "the app may stay silent this long while it owes a response; then 504 (default: no limit)",
        "SEC",
    ),
    Option(
        "upstream-timeout",
        parse_positive_seconds,
        60.0,
        "consumer side: a provider instance silent this long while it owes a response: 504, and ejected",
        "SEC",
    ),
    Option("stop-timeout", parse_seconds, 10.0, "exec mode: SIGTERM to SIGKILL of the child", "SEC"),
)
OPTIONS_BY_ATTR = {option.attr: option for option in OPTIONS}
