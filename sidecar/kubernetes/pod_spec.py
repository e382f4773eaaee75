"""Small readers of the parts of a pod spec that `inject` rewrites (sidecar.kubernetes.inject):
each says where the manifest is wrong (an InjectError naming the object and field) instead of
failing on a shape it did not expect.
"""

from __future__ import annotations

from typing import Any

from sidecar.errors import InjectError

SIDECAR_NAME = "graceful-sidecar"


def previous_arg(container: dict[str, Any] | None, flag: str) -> str | None:
    args = [str(a) for a in (container or {}).get("args") or []]
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def mapping(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.setdefault(key, {})
    if not isinstance(value, dict):
        raise InjectError(f"{where}: {key} is not a mapping")
    return value


def container_list(spec: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise InjectError(f"{where}: spec.{key} is not a list of containers")
    return value


def declared_ports(container: dict[str, Any]) -> dict[str, int]:
    """name (or the number, for an unnamed port) -> containerPort, in order."""
    found: dict[str, int] = {}
    for port in container.get("ports") or []:
        number = port.get("containerPort") if isinstance(port, dict) else None
        if isinstance(number, int) and not isinstance(number, bool):
            found[str(port.get("name") or number)] = number
    return found


def runs_sidecar_exec(container: dict[str, Any]) -> bool:
    command = container.get("command")
    return isinstance(command, list) and bool(command) and str(command[0]).endswith(SIDECAR_NAME)


def first_port(container: dict[str, Any]) -> int | None:
    return next(iter(declared_ports(container).values()), None)


def resolve_port(port: Any, container: dict[str, Any]) -> int | None:
    """A probe's port, a number or the name of one of its own container's ports (as the kubelet)."""
    if isinstance(port, int):
        return port
    if isinstance(port, str):
        return int(port) if port.isdigit() else declared_ports(container).get(port)
    return None


def describe_handler(handler: Any) -> str:
    """`(exec: sleep 5)`, `(httpGet :8080/drain)`: a hook or probe, in a few words."""
    if not isinstance(handler, dict):
        return f"({handler!r})"
    if isinstance(handler.get("exec"), dict):
        return "(exec: " + " ".join(str(a) for a in handler["exec"].get("command") or []) + ")"
    if isinstance(handler.get("httpGet"), dict):
        action = handler["httpGet"]
        return f"(httpGet :{action.get('port')}{action.get('path', '/')})"
    kinds = [key for key in ("tcpSocket", "grpc", "sleep") if key in handler]
    return f"({kinds[0]})" if kinds else "(unknown)"
