"""Eureka's instance record (`InstanceInfo`) and registry answers, as its REST API speaks JSON:
the Eureka backend's layout.

From Netflix/eureka (`eureka-client`'s `InstanceInfo`, `Applications`, and the Jackson codec a
Spring Cloud Netflix server answers with): an application is named in upper case
(`InstanceInfo.Builder.setAppName` upper-cases it), so Eureka's app names are case-insensitive,
and Spring Cloud hands them to users in lower case. An instance has an `instanceId`, `hostName`
and `ipAddr`, a `port` as `{"$": 8080, "@enabled": "true"}`, a `status` (`UP`, `DOWN`,
`STARTING`, `OUT_OF_SERVICE`, `UNKNOWN`), a `leaseInfo` with the renewal interval and lease
duration the client promises, and a `metadata` map of strings. Only `UP` instances take
traffic: Eureka clients filter the others out (`shouldFilterOnlyUpInstances`, on by default).
The weight is `metadata["weight"]`, which Spring Cloud LoadBalancer's weighted supplier reads;
the sidecar's `sidecar_*` keys sit beside it.

An answer's `apps__hashcode` counts the instances of each status over the whole registry,
`DOWN_1_UP_3_` (`Applications.getReconcileHashCode`): a client that applied a delta compares it
with its own copy's and fetches everything again when they differ, as Eureka's client does.
Old servers wrote a lone application or instance as an object rather than a list of one; both
are read.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from registry_adapters.base import Instance

log = logging.getLogger(__name__)

UP = "UP"
OUT_OF_SERVICE = "OUT_OF_SERVICE"
WEIGHT_KEY = "weight"
# The sidecar's admin API (sidecar.protocol.metadata's META_ADMIN): Eureka's health and status
# pages point there.
ADMIN_KEY = "sidecar_admin"
# An instance without a weight is read as the sidecar's default weight.
DEFAULT_WEIGHT = 100
# Eureka's "I am in my own data center" (no AWS metadata): what every non-AWS client sends.
DATA_CENTER = {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"}


def app_name(service: str) -> str:
    """The Eureka application of `service`: its name in upper case, as the server stores it."""
    return service.upper()


def record(instance: Instance, *, lease_s: int, renew_s: int, dirty_ms: int) -> dict[str, Any]:
    """The `{"instance": InstanceInfo}` body that registers `instance` (status UP), its weight
    in the metadata, its health and status pages at the sidecar's admin API when it has one.
    `dirty_ms` must grow with every registration of the instance: the server keeps a record
    whose `lastDirtyTimestamp` is newer than the one registered."""
    info: dict[str, Any] = {
        "instanceId": instance.instance_id,
        "app": app_name(instance.service),
        "hostName": instance.host,
        "ipAddr": instance.host,
        "vipAddress": instance.service,
        "secureVipAddress": instance.service,
        "status": UP,
        "overriddenStatus": "UNKNOWN",
        "port": {"$": instance.port, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": DATA_CENTER,
        "leaseInfo": {"renewalIntervalInSecs": renew_s, "durationInSecs": lease_s},
        "metadata": {**instance.meta, WEIGHT_KEY: str(instance.weight)},
        "homePageUrl": f"http://{instance.address}/",
        "lastDirtyTimestamp": str(dirty_ms),
        "isCoordinatingDiscoveryServer": "false",
    }
    if admin := instance.meta.get(ADMIN_KEY):
        info["healthCheckUrl"] = f"{admin}/ready"
        info["statusPageUrl"] = f"{admin}/status"
    return {"instance": info}


def as_list(value: Any) -> list[Any]:
    """A JSON list, or an object standing for a list of one (older servers), or nothing."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def applications(body: Any) -> list[dict[str, Any]]:
    """The applications of a `GET /apps` or `/apps/delta` answer; ValueError if it is none."""
    if not isinstance(body, dict) or not isinstance(body.get("applications"), dict):
        raise ValueError("no Eureka applications in the answer")
    return [app for app in as_list(body["applications"].get("application")) if isinstance(app, dict)]


def instances_of(app: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [info for info in as_list(app.get("instance")) if isinstance(info, dict)]


def hashcode(infos: Iterable[Mapping[str, Any]]) -> str:
    """Eureka's reconcile hash code of a registry holding `infos`: `STATUS_COUNT_` per status,
    in the order of the status names."""
    counts = Counter(str(info.get("status")) for info in infos)
    return "".join(f"{status}_{count}_" for status, count in sorted(counts.items()))


def service_of(app: Mapping[str, Any]) -> str | None:
    """The service name an application's instances were registered under: their `vipAddress`
    (the name as written, which the sidecar and Spring Cloud set), else the app name in lower
    case (Spring Cloud's service id); None for an application without instances."""
    infos = instances_of(app)
    if not infos:
        return None
    vip = infos[0].get("vipAddress")
    if isinstance(vip, str) and vip.upper() == str(app.get("name")):
        return vip
    return str(app.get("name", "")).lower() or None


def instance(info: Mapping[str, Any], service: str) -> Instance | None:
    """The Instance an UP InstanceInfo of `service` describes; None for another status, and
    None (logged) for a record the sidecar cannot use (no address, no port)."""
    if info.get("status") != UP:
        return None
    try:
        metadata = {str(k): str(v) for k, v in (info.get("metadata") or {}).items()}
        weight_text = metadata.pop(WEIGHT_KEY, None)
        weight = int(weight_text) if weight_text and weight_text.isdigit() else DEFAULT_WEIGHT
        port = int(info["port"]["$"])
        host = str(info.get("ipAddr") or info["hostName"])
        instance_id = str(info.get("instanceId") or f"{info['hostName']}:{port}")
        if host and 0 < port < 65536 and weight < 1 << 31:
            return Instance(service, instance_id, host, port, weight, metadata)
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    log.warning("skipping a Eureka record that is no usable instance of %s: %.300r", service, info)
    return None
