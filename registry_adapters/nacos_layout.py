"""Nacos's instance record, as its open API (v2 HTTP) takes and answers it: the Nacos backend's
layout.

From alibaba/nacos (`Instance`, `InstanceControllerV2`, the naming `ParamChecker`): an instance
is known by its address and cluster (`ip`, `port`, `clusterName`; the sidecar uses Nacos's
`DEFAULT` cluster), in a service (`serviceName`) of a group (`groupName`, `DEFAULT_GROUP`) of a
namespace (`namespaceId`, `public`). It has a `weight` (a float, 0 to 10000), which Nacos's
clients balance by, `enabled` (a disabled instance is left out of every instance list: how an
operator takes one out while it runs) and `healthy` (an ephemeral instance turns unhealthy when
its heartbeats stop), and a `metadata` map of strings, sent as JSON. Nacos's clients send
traffic only to instances that are enabled, healthy and of a weight above 0.

Nacos has no field for an id of the client's choosing (its `instanceId` is made from the
address), so the sidecar's instance id travels in the metadata (`sidecar_instance_id`), beside
the `sidecar_*` keys. The lease terms of an ephemeral instance are metadata too, the
`preserved.*` keys Nacos's own clients set: a heartbeat interval, the silence after which the
instance turns unhealthy, and the one after which it is deleted.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from registry_adapters.base import Instance

log = logging.getLogger(__name__)

DEFAULT_GROUP = "DEFAULT_GROUP"
DEFAULT_NAMESPACE = "public"
CLUSTER = "DEFAULT"
ID_KEY = "sidecar_instance_id"
# Nacos's lease terms, in ms (com.alibaba.nacos.api.common.PreservedMetadataKeys).
PRESERVED = "preserved."
BEAT_INTERVAL_KEY = "preserved.heart.beat.interval"
BEAT_TIMEOUT_KEY = "preserved.heart.beat.timeout"
DELETE_TIMEOUT_KEY = "preserved.ip.delete.timeout"
# Nacos refuses a weight above this (Instance.validate); a larger sidecar weight is published as it.
MAX_WEIGHT = 10000


def grouped(service: str, group: str) -> str:
    """Nacos's full service name, `GROUP@@NAME`: what a heartbeat must name."""
    return f"{group}@@{service}"


def address(instance: Instance) -> dict[str, str]:
    """The fields that name `instance`'s record in Nacos (its service, address and cluster)."""
    return {
        "serviceName": instance.service,
        "ip": instance.host,
        "port": str(instance.port),
        "clusterName": CLUSTER,
        "ephemeral": "true",
    }


def record(instance: Instance, *, in_rotation: bool, ttl_ms: int, beat_ms: int) -> dict[str, str]:
    """The form that registers `instance` as a whole (a registration replaces every field):
    its weight (clamped to Nacos's range), enabled only while it is in rotation, its id and the
    lease terms in the metadata beside its own keys."""
    metadata = {
        **instance.meta,
        ID_KEY: instance.instance_id,
        BEAT_INTERVAL_KEY: str(beat_ms),
        BEAT_TIMEOUT_KEY: str(ttl_ms),
        DELETE_TIMEOUT_KEY: str(2 * ttl_ms),
    }
    return {
        **address(instance),
        "weight": str(min(instance.weight, MAX_WEIGHT)),
        "enabled": "true" if in_rotation and instance.weight > 0 else "false",
        "metadata": json.dumps(metadata, ensure_ascii=False, separators=(",", ":")),
    }


def beat(instance: Instance) -> dict[str, str]:
    """The form of a light heartbeat (no beat info: a lost instance is answered 20404 and
    registered again as a whole, not re-created by the server from the beat, which would make
    it enabled)."""
    return {"ip": instance.host, "port": str(instance.port), "clusterName": CLUSTER}


def hosts(body: Any) -> list[dict[str, Any]]:
    """The instances of a `GET /v2/ns/instance/list` answer; ValueError if it is none."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), list):
        raise ValueError("no Nacos instance list in the answer")
    return [host for host in data["hosts"] if isinstance(host, dict)]


def instance(host: Mapping[str, Any], service: str) -> Instance | None:
    """The Instance a listed host of `service` describes, if it should get traffic (enabled,
    healthy, a weight above 0); None (logged) for a record the sidecar cannot use."""
    if host.get("enabled") is False or host.get("healthy") is False:
        return None
    try:
        metadata = {
            str(k): str(v)
            for k, v in (host.get("metadata") or {}).items()
            if not str(k).startswith(PRESERVED)
        }
        ip, port = str(host["ip"]), int(host["port"])
        instance_id = metadata.pop(ID_KEY, None) or f"{ip}:{port}"
        weight = float(host.get("weight", 1.0))
        if ip and 0 < port < 65536 and math.isfinite(weight) and 0 <= weight <= MAX_WEIGHT:
            found = Instance(service, instance_id, ip, port, round(weight), metadata)
            return found if found.weight > 0 else None
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    log.warning("skipping a Nacos record that is no usable instance of %s: %.300r", service, host)
    return None
