"""A Service of the same input that sends traffic to an injected app's port is pointed at the
sidecar's instead (sidecar.kubernetes.inject): otherwise its consumers would bypass the sidecar,
and nothing would drain or warm up their calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class InjectedPod:
    """What a Service needs to know about an injected pod template."""

    namespace: str | None
    labels: dict[str, str]
    app_port: int
    app_port_names: frozenset[str]


def point_service(service: dict[str, Any], pods: list[InjectedPod], listen_port: int) -> None:
    """Point a Service's ports that reach an injected app at the sidecar instead."""
    spec = service.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("selector"), dict) or not spec["selector"]:
        return
    selector = {str(k): str(v) for k, v in spec["selector"].items()}
    namespace = (service.get("metadata") or {}).get("namespace")
    for pod in pods:
        if pod.namespace != namespace or not selector.items() <= pod.labels.items():
            continue
        for port in spec.get("ports") or []:
            if not isinstance(port, dict):
                continue
            target = port.get("targetPort", port.get("port"))  # targetPort defaults to port
            if target == pod.app_port or target in pod.app_port_names or str(target) == str(pod.app_port):
                port["targetPort"] = listen_port
