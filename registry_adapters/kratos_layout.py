"""go-kratos's service instance, as its etcd registry stores it: the etcd backend's key layout.

From go-kratos/kratos: `contrib/registry/etcd/registry.go` puts one key
`NAMESPACE/NAME/ID` per instance (default namespace `/microservices`) whose value is
`json.Marshal` of `registry.ServiceInstance` (`registry/registry.go`): `{"id", "name", "version",
"metadata": {string: string}, "endpoints": ["http://host:port", "grpc://..."]}`. Readers keep
the values whose `name` is the service; kratos's selector takes a node's weight from
`metadata["weight"]` when it parses as an integer (`selector/default_node.go`).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

from registry_adapters.base import Instance

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "/microservices"
WEIGHT_KEY = "weight"
# kratos reads a missing weight as "no weight"; the sidecar's default weight stands for it.
DEFAULT_WEIGHT = 100


def key(namespace: str, service: str, instance_id: str) -> str:
    return f"{namespace}/{service}/{instance_id}"


def value(instance: Instance) -> str:
    """The JSON of kratos's `ServiceInstance` for `instance`, the weight in its metadata."""
    fields = {
        "id": instance.instance_id,
        "name": instance.service,
        "version": instance.meta.get("version", ""),
        "metadata": {**instance.meta, WEIGHT_KEY: str(instance.weight)},
        # kratos's HTTP clients take the first http:// endpoint, its gRPC clients the first
        # grpc:// one (`endpoint.ParseEndpoint`): the sidecar's listener takes both (HTTP/1.1
        # and h2c on one port), and a client asks for a service of its own protocol.
        "endpoints": [f"http://{instance.address}", f"grpc://{instance.address}"],
    }
    return json.dumps(fields, separators=(",", ":"))


def instance(text: str, service: str) -> Instance | None:
    """The Instance a kratos value describes, or None (logged) when it is no instance of
    `service` with an `http://` endpoint (the sidecar proxies HTTP)."""
    try:
        fields: Any = json.loads(text)
        metadata = dict(fields.get("metadata") or {})
        instance_id, name = fields["id"], fields["name"]
        weight_text = metadata.pop(WEIGHT_KEY, None)
        weight = DEFAULT_WEIGHT
        if isinstance(weight_text, str) and weight_text.isdigit():
            weight = int(weight_text)
        texts = [instance_id, name, *metadata.keys(), *metadata.values()]
        endpoints = [urlsplit(e) for e in fields.get("endpoints") or [] if isinstance(e, str)]
        http = [e for e in endpoints if e.scheme == "http" and e.hostname and e.port]
        if name == service and http and all(isinstance(t, str) for t in texts) and weight < 1 << 31:
            return Instance(
                name, instance_id, str(http[0].hostname), int(http[0].port or 0), weight, metadata
            )
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    log.warning("skipping an etcd value that is no kratos instance of %s: %.300r", service, text)
    return None
