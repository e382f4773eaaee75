"""Where and how the ZooKeeper backend publishes an instance: the node layouts that existing
consumers of ZooKeeper already read, so that a consumer without a sidecar sees the instance too.

Pure functions of an `Instance`: no client, no I/O. Each layout answers five questions: under
which parent the instances of a service live, which child (name and data) stands for an
instance, which instance id a child belongs to (to find our own nodes again), what instance
a child read back stands for (`None` for what does not belong in the watch), and which service
a child of its root stands for, with the parent of that service's instances (to list services).

- `CuratorLayout`: Apache Curator's service discovery (curator-x-discovery), which Spring Cloud
  Zookeeper uses: `/services/{service}/{id}` holding Curator's JSON `ServiceInstance` with a
  Spring Cloud `ZookeeperInstance` payload. Sources followed:
  apache/curator curator-x-discovery/src/main/java/org/apache/curator/x/discovery/ServiceInstance.java
  (the fields, `@JsonTypeInfo(use=Id.CLASS)` on the payload: its `@class`),
  .../x/discovery/details/JsonInstanceSerializer.java (a plain Jackson ObjectMapper: unknown
  properties fail, so nothing else may be written), .../details/ServiceDiscoveryImpl.java
  (`basePath/name/id`, EPHEMERAL for `serviceType` DYNAMIC, an update is a setData); and
  spring-cloud/spring-cloud-zookeeper spring-cloud-zookeeper-discovery/src/main/java/org/
  springframework/cloud/zookeeper/discovery/ZookeeperInstance.java (payload: id, name, metadata),
  .../ZookeeperServiceInstance.java (a consumer's metadata is the payload's metadata). Spring
  Cloud LoadBalancer's weighted supplier reads the weight from metadata `weight`.
- `DubboLayout`: Dubbo's ZooKeeper registry: `/dubbo/{service}/providers/{URL-encoded provider
  URL}`, an ephemeral node without data. Sources followed: apache/dubbo dubbo-registry/
  dubbo-registry-zookeeper/src/main/java/org/apache/dubbo/registry/zookeeper/ZookeeperRegistry.java
  (`toUrlPath` = `toCategoryPath(url) + "/" + URL.encode(url.toFullString())`, consumers keep
  children containing the encoded `://`), dubbo-common/src/main/java/org/apache/dubbo/common/
  URLStrParser.java (`parseEncodedStr`: the query split at `&` and `;`, each value decoded
  once), and dubbo-cluster/src/main/java/org/apache/dubbo/rpc/
  cluster/loadbalance/AbstractLoadBalance.java (`weight`, default 100; warmup from the URL's
  `timestamp` and `warmup` (ms, default 10 minutes), linear: weight x uptime / warmup, at least 1;
  Dubbo 3.0-3.3.6's ZooKeeper registry strips `timestamp`, so only `weight` reaches them all).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from registry_adapters.base import Instance, RegistryRejected
from sidecar.protocol.metadata import (
    DEFAULT_WEIGHT,
    MAX_WEIGHT,
    META_START_MS,
)

log = logging.getLogger(__name__)

# Spring Cloud's default weight is 1 on a scale of its own: an instance without one gets this
# project's default base (DEFAULT_WEIGHT).


@dataclass(frozen=True, slots=True)
class Node:
    """One child of a layout's service parent: its name and its data."""

    name: str
    data: bytes


class Layout(Protocol):
    name: str
    reads_data: bool  # False: a child's name says everything (Dubbo), no read of its data
    root: str  # the node whose children are the services

    def service_node(self, child: str) -> tuple[str, str]:
        """The service a child of `root` stands for, and the parent of its instances."""
        ...

    def parent(self, service: str) -> str: ...

    def node(self, instance: Instance, registered_ms: int) -> Node: ...

    def owner(self, child: str) -> str | None: ...

    def parse(self, service: str, child: str, data: bytes) -> Instance | None: ...


def check_name(what: str, text: str) -> None:
    """A service or instance id becomes one path segment: refuse what cannot be one."""
    if not text or "/" in text or text in (".", "..") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise RegistryRejected(f"zookeeper: {what} {text!r} cannot be a ZooKeeper node name")


# -- Curator (Spring Cloud Zookeeper) -------------------------------------------------------------

SPRING_PAYLOAD_CLASS = "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance"
CURATOR_WEIGHT_KEY = "weight"  # Spring Cloud LoadBalancer's WeightedServiceInstanceListSupplier
# Spring Cloud Zookeeper's default uri spec, "{scheme}://{address}:{port}", as Curator's UriSpec
# serialises it (a list of parts, each a literal or a variable).
_URI_SPEC = {
    "parts": [
        {"value": "scheme", "variable": True},
        {"value": "://", "variable": False},
        {"value": "address", "variable": True},
        {"value": ":", "variable": False},
        {"value": "port", "variable": True},
    ]
}


class CuratorLayout:
    name = "curator"
    reads_data = True

    def __init__(self, base_path: str = "/services") -> None:
        self.base_path = self.root = base_path

    def service_node(self, child: str) -> tuple[str, str]:
        return child, f"{self.base_path}/{child}"

    def parent(self, service: str) -> str:
        check_name("service", service)
        return f"{self.base_path}/{service}"

    def node(self, instance: Instance, registered_ms: int) -> Node:
        check_name("instance id", instance.instance_id)
        metadata = {**instance.meta, CURATOR_WEIGHT_KEY: str(instance.weight)}
        document = {
            "name": instance.service,
            "id": instance.instance_id,
            "address": instance.host,
            "port": instance.port,
            "sslPort": None,
            "payload": {
                "@class": SPRING_PAYLOAD_CLASS,
                "id": instance.instance_id,
                "name": instance.service,
                "metadata": metadata,
            },
            "registrationTimeUTC": registered_ms,
            "serviceType": "DYNAMIC",
            "uriSpec": _URI_SPEC,
            "enabled": True,
        }
        return Node(instance.instance_id, json.dumps(document, separators=(",", ":")).encode())

    def owner(self, child: str) -> str | None:
        return child

    def parse(self, service: str, child: str, data: bytes) -> Instance | None:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            document = None
        if not isinstance(document, dict):
            log.warning("skipping a zookeeper node that is not Curator's JSON: %s/%s", service, child)
            return None
        instance_id, host, port = document.get("id"), document.get("address"), document.get("port")
        payload = document.get("payload") or {}
        metadata = payload.get("metadata") or {} if isinstance(payload, dict) else None
        if not (
            isinstance(instance_id, str)
            and instance_id
            and isinstance(host, str)
            and host
            and type(port) is int
            and 1 <= port <= 65535
            and isinstance(metadata, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            log.warning("skipping a malformed Curator instance %s/%s: %.300r", service, child, document)
            return None
        if document.get("enabled") is False:
            return None  # Curator's own way to keep an instance out of rotation
        meta = dict(metadata)
        weight = _weight(meta.pop(CURATOR_WEIGHT_KEY, None))
        if weight is None:
            return None
        return Instance(service, instance_id, host, port, weight, meta)


# -- Dubbo ----------------------------------------------------------------------------------------

DUBBO_INSTANCE_KEY = "sidecar_instance_id"  # the sidecar's instance id; Dubbo URLs have none
_DUBBO_ENCODED_SEPARATOR = "%3A%2F%2F"  # URL.encode("://"): what Dubbo consumers look for


def dubbo_encode(text: str) -> str:
    """Java's URLEncoder.encode(text, "UTF-8"), which Dubbo's URL.encode calls: unreserved are
    letters, digits and `.-*_`; a space becomes `+`; `~` is encoded (Python keeps it)."""
    return quote_plus(text, safe="*").replace("~", "%7E")


class DubboLayout:
    name = "dubbo"
    reads_data = False

    def __init__(self, root: str = "/dubbo", protocol: str = "dubbo") -> None:
        self.root = root
        self.protocol = protocol

    def service_node(self, child: str) -> tuple[str, str]:
        return unquote_plus(child), f"{self.root}/{child}/providers"  # the child is URL.encode(name)

    def parent(self, service: str) -> str:
        check_name("service", service)
        return f"{self.root}/{dubbo_encode(service)}/providers"

    def node(self, instance: Instance, registered_ms: int) -> Node:
        check_name("instance id", instance.instance_id)
        meta = instance.meta
        start_ms = _int(meta.get(META_START_MS)) or registered_ms
        params: dict[str, str] = {
            "anyhost": "false",
            "application": instance.service,
            "category": "providers",
            "dynamic": "true",
            "interface": instance.service,
            "side": "provider",
            "timestamp": str(start_ms),
            # The sidecar's own weight steps (or the latency ramp), with `warmup` 0 so that a
            # Dubbo that ramps from `timestamp` (2.7, and 3.x after apache/dubbo#16033) does not
            # ramp again on top of them, and would otherwise assume 10 minutes. Dubbo 3.0 to
            # 3.3.6 drop `timestamp` from what their ZooKeeper registry reads and never ramp: the
            # weight is what reaches every version (tests/test_interop_dubbo.py).
            "warmup": "0",
            "weight": str(instance.weight),
        }
        # The sidecar's own values, its metadata and the instance id, are percent-encoded: Dubbo
        # writes parameter values raw and splits the query at `&` and `;` (URLStrParser), so an
        # id `a&b` would be read back as `a`, and one with `%41` as `A`: another id, whose node
        # a weight change or set_offline never finds. Only this layout reads them back. The
        # service stays raw: Dubbo consumers match `interface` and the path as written, and
        # sidecar.options keeps service names to characters a Dubbo URL need not encode.
        own = {**meta, DUBBO_INSTANCE_KEY: instance.instance_id}
        params.update((key, quote(value, safe="")) for key, value in own.items())
        query = "&".join(f"{key}={params[key]}" for key in sorted(params))  # URL.toFullString order
        url = f"{self.protocol}://{instance.address}/{instance.service}?{query}"
        return Node(dubbo_encode(url), b"")

    def owner(self, child: str) -> str | None:
        parsed = _parse_dubbo(child)
        return parsed[2].get(DUBBO_INSTANCE_KEY) if parsed else None

    def parse(self, service: str, child: str, data: bytes) -> Instance | None:
        parsed = _parse_dubbo(child)
        if parsed is None:
            log.warning("skipping a zookeeper node that is not a Dubbo provider URL: %.300s", child)
            return None
        host, port, params = parsed
        interface = params.get("interface")
        if interface not in (None, service) or params.get("category", "providers") != "providers":
            return None
        if params.get("enabled", "true") == "false":
            return None  # Dubbo consumers skip disabled providers (UrlUtils.isMatch)
        weight = _weight(params.get("weight"))
        if weight is None:
            return None
        instance_id = params.get(DUBBO_INSTANCE_KEY) or (
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        )
        meta = {key: value for key, value in params.items() if key.startswith("sidecar_")}
        meta.pop(DUBBO_INSTANCE_KEY, None)
        return Instance(service, instance_id, host, port, weight, meta)


def _parse_dubbo(child: str) -> tuple[str, int, dict[str, str]] | None:
    """host, port and (decoded) parameters of an encoded Dubbo URL; None if it is not one."""
    if _DUBBO_ENCODED_SEPARATOR not in child:
        return None
    url = unquote_plus(child)
    _, _, rest = url.partition("://")
    location, _, query = rest.partition("?")
    authority = location.split("/", 1)[0].rpartition("@")[2]
    host, _, port_text = authority.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    port = _int(port_text)
    if not host or port is None or not 1 <= port <= 65535:
        return None
    params: dict[str, str] = {}
    for pair in query.split("&"):
        key, sep, value = pair.partition("=")
        if key and sep:
            params[key] = unquote(value)
    return host, port, params


def _weight(text: object) -> int | None:
    """A published weight: absent means the default; 0, negative or junk keeps it out."""
    if text is None:
        return DEFAULT_WEIGHT
    value = _int(text)
    if value is None or value <= 0:
        return None
    return min(value, MAX_WEIGHT)


def _int(text: object) -> int | None:
    try:
        return int(str(text)) if text is not None else None
    except ValueError:
        return None


LAYOUTS = ("curator", "dubbo")


def make_layout(name: str, protocol: str = "dubbo") -> Layout:
    """The layout called `name` (one of LAYOUTS); `protocol` is the scheme of Dubbo's URLs."""
    if name == "dubbo":
        return DubboLayout(protocol=protocol)
    if name == "curator":
        return CuratorLayout()
    raise ValueError(f"unknown zookeeper layout {name!r}")
