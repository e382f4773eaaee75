"""How an app speaks at its port, as a pod spec and the Services of the same input tell it, for
`graceful-sidecar inject`: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), which every gRPC
server speaks.

What tells it: the app's container port's name (`grpc`, `h2c`, `http2`, or Istio's `grpc-NAME`;
`grpc-web` is HTTP/1.1), a `grpc` readiness or liveness probe (the kubelet's own gRPC health
check, `grpc.health.v1.Health/Check`, which the sidecar's `--app-health grpc[:SERVICE]` makes
too), or a Service port that reaches the app with `appProtocol: grpc`, `h2c` or
`kubernetes.io/h2c` (or such a name). Pure functions over parsed YAML.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# What says that a port speaks HTTP/2 with prior knowledge (h2c), which gRPC servers do: a port
# name (Kubernetes' own convention for Services is appProtocol; Istio's is the name, `grpc` or
# `grpc-NAME`; `grpc-web` is HTTP/1.1), and a Service port's appProtocol.
H2C_PORT_NAMES = frozenset({"grpc", "h2c", "http2"})
H2C_APP_PROTOCOLS = frozenset({"grpc", "h2c", "http2", "kubernetes.io/h2c"})
GRPC_HEALTH = "grpc"  # the sidecar's --app-health for the standard gRPC health check


@dataclass(frozen=True, slots=True)
class H2cServicePort:
    """A Service port that declares HTTP/2 (appProtocol or name), and what it reaches."""

    namespace: str | None
    selector: dict[str, str]
    target: Any  # a port number or the name of a container port
    kind: str  # "grpc" (appProtocol grpc, or a name that says grpc) or "h2c"

    def selects(self, namespace: str | None, labels: dict[str, str]) -> bool:
        return namespace == self.namespace and self.selector.items() <= labels.items()

    def reaches(self, port: int, names: frozenset[str]) -> bool:
        """Whether it targets container port `port`, by number or by one of its `names`."""
        return self.target == port or self.target in names or str(self.target) == str(port)


def speaks_h2c(
    app: dict[str, Any],
    app_port: int,
    names: frozenset[str],
    previous_app: str | None,
    h2c_ports: list[H2cServicePort],
    app_health: str | None,
) -> str | None:
    """How the app speaks HTTP/2 at `app_port`, if it does: "grpc" (a grpc probe, a `grpc` port,
    an explicit `--app-health grpc`) or "h2c" (HTTP/2 by a port's name or appProtocol; also a pod
    injected before, whose sidecar's --app was `previous_app`, h2c://); None for HTTP/1.1."""
    grpc_probe = any(grpc_action(app, key) is not None for key in ("readinessProbe", "livenessProbe"))
    if grpc_probe or (app_health is not None and app_health.split(":", 1)[0] == GRPC_HEALTH):
        return "grpc"
    declared = {_h2c_name(n) for n in names} | {
        port.kind for port in h2c_ports if port.reaches(app_port, names)
    }
    if "grpc" in declared:
        return "grpc"
    if "h2c" in declared or (previous_app or "").startswith("h2c://"):
        return "h2c"
    return None


def _h2c_name(name: str) -> str | None:
    """The protocol a port's name declares: grpc (`grpc`, `grpc-api`), h2c (`h2c`, `http2`) or
    None."""
    lowered = name.lower()
    protocol = lowered.split("-", 1)[0]
    if protocol not in H2C_PORT_NAMES or lowered.startswith("grpc-web"):
        return None
    return "grpc" if protocol == "grpc" else "h2c"


def h2c_service_ports(obj: dict[str, Any]) -> Iterator[H2cServicePort]:
    """The ports of a Service that declare HTTP/2: appProtocol grpc, h2c, kubernetes.io/h2c, or
    without an appProtocol a name that says so (as Istio reads it)."""
    spec = obj.get("spec") if obj.get("kind") == "Service" else None
    if not isinstance(spec, dict) or not isinstance(spec.get("selector"), dict) or not spec["selector"]:
        return
    selector = {str(k): str(v) for k, v in spec["selector"].items()}
    namespace = (obj.get("metadata") or {}).get("namespace")
    for port in spec.get("ports") or []:
        if not isinstance(port, dict):
            continue
        protocol = str(port.get("appProtocol") or "")
        if protocol:  # said outright: it wins over the name (`appProtocol: http` is HTTP/1.1)
            kind = ("grpc" if protocol == "grpc" else "h2c") if protocol in H2C_APP_PROTOCOLS else None
        else:
            kind = _h2c_name(str(port.get("name") or ""))
        if kind is not None:
            target = port.get("targetPort", port.get("port"))  # targetPort defaults to port
            yield H2cServicePort(namespace, selector, target, kind)


def grpc_action(container: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The `grpc` action of the container's probe `key`, when it has one."""
    probe = container.get(key)
    action = probe.get("grpc") if isinstance(probe, dict) else None
    return action if isinstance(action, dict) else None


def grpc_health_arg(action: dict[str, Any]) -> str:
    """--app-health for a grpc probe: `grpc`, or `grpc:SERVICE` with the probe's `service`."""
    service = action.get("service")
    return f"{GRPC_HEALTH}:{service}" if isinstance(service, str) and service else GRPC_HEALTH
