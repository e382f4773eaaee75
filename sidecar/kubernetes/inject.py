"""`graceful-sidecar inject`: the sidecar added to Kubernetes manifests, as `linkerd inject` does.

Pure functions over parsed YAML (sidecar.kubernetes.manifests reads and writes it). For each Deployment,
StatefulSet, DaemonSet, ReplicaSet and Pod, the pod spec gets what deploy/kubernetes/deployment.yaml
shows by hand: a native sidecar (an init container with `restartPolicy: Always`), the app's
preStop hook on the sidecar's /shutdown, the app's readiness moved to the sidecar's /ready, and a
grace period that covers the drain. A Service of the same input that sends traffic to the app's
port is pointed at the sidecar's, or consumers would bypass it.

Injecting is idempotent: an injected pod is recognised (the sidecar by its name, the app's probe
by the admin port), and what inject would write is what is already there.

A gRPC (or other HTTP/2) app gets `--app h2c://` and, from its `grpc` probe, `--app-health
grpc[:SERVICE]` (sidecar.kubernetes.app_protocol tells it). Its liveness probe stays on the app,
as every app's: it tells the kubelet to restart the app, which is the app's to answer.

Why `--allow $(HOST_IP)`: the kubelet sends the preStop GET from the node, and an httpGet hook
cannot read a Secret for the token header; most network plugins make that request come from the
node's IP. Where one does not, add the header by hand (deploy/kubernetes/deployment.yaml).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.errors import InjectError
from sidecar.kubernetes.app_protocol import (
    GRPC_HEALTH,
    H2cServicePort,
    grpc_action,
    grpc_health_arg,
    h2c_service_ports,
    speaks_h2c,
)
from sidecar.kubernetes.manifests import load_documents, render
from sidecar.kubernetes.pod_spec import (
    SIDECAR_NAME,
    container_list,
    declared_ports,
    describe_handler,
    first_port,
    mapping,
    previous_arg,
    resolve_port,
    runs_sidecar_exec,
)
from sidecar.kubernetes.services import InjectedPod, point_service
from sidecar.options import parse_health_path

ADMIN_PORT = 16688  # the design's admin port; preStop and probes name it by number
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})
# Grace period = drain + the app's stop + this: deregistration retried at the drain's end, the
# sidecar's own exit and the kubelet's reaction (tests/support/deploy_files.py, MARGIN_SECONDS).
GRACE_MARGIN_SECONDS = 5
K8S_DEFAULT_GRACE_SECONDS = 30
DEFAULT_DRAIN_SECONDS = 25.0  # the sidecar's --drain-timeout default
DEFAULT_STOP_SECONDS = 10.0  # the sidecar's --stop-timeout default, as the app's stop time
APP_STOP_ANNOTATION = "graceful-sidecar/app-stop-seconds"
SIDECAR_PORT_NAMES = ("sidecar-http", "sidecar-admin")
ENV_NAMES = ("POD_IP", "HOST_IP", "SIDECAR_TOKEN")

Warn = Callable[[str], None]


# Without --registry each pod's sidecar would keep an SQLite registry of its own, inside the pod:
# no pod would ever see another. An explicit sqlite:// is taken as meant.
REGISTRY_REQUIRED = (
    "--registry is required: without it every pod keeps a registry of its own and no pod sees"
    " another; give the one the fleet shares (consul://, etcd://, zookeeper://,"
    " eureka://, nacos://), or an explicit"
    " sqlite:///PATH on purpose"
)


def placeholder_image() -> str:
    """The image name inject writes without --image: where a release would be pushed, not one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ghcr.io/example/graceful-sidecar:{version('graceful-sidecar')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "ghcr.io/example/graceful-sidecar:latest"


@dataclass(frozen=True, slots=True)
class InjectOptions:
    image: str | None = None  # None: the placeholder, with a warning
    registry: str | None = None
    listen_port: int = 8443
    app_port: int | None = None
    app_health: str | None = None  # None: the app's former readiness path
    drain_timeout: float | None = None
    stop_timeout: float | None = None
    token_secret: str | None = None
    service: str | None = None  # None: the workload's name


def inject_sources(sources: list[tuple[str, str]], options: InjectOptions, warn: Warn) -> str:
    """The injected stream of every (name, YAML text) source, documents in order."""
    if options.registry is None:
        raise InjectError(REGISTRY_REQUIRED)
    documents = [(name, doc) for name, text in sources for doc in load_documents(name, text)]
    originals = [copy.deepcopy(doc.data) for _, doc in documents]
    # Before any pod: a Service's appProtocol tells how the app speaks, and it may come later.
    h2c_ports = [port for _, doc in documents for obj in objects(doc.data) for port in h2c_service_ports(obj)]
    pods = [
        pod
        for name, doc in documents
        for obj in objects(doc.data)
        if (pod := inject_object(name, obj, options, warn, h2c_ports)) is not None
    ]
    for _, doc in documents:
        for obj in objects(doc.data):
            if obj.get("kind") == "Service":
                point_service(obj, pods, options.listen_port)
    if pods and options.image is None:
        warn(
            f"no --image: the sidecar's image is the placeholder {placeholder_image()}, which no"
            " registry serves; build and push the image (README, Deployment) and pass --image"
        )
    if pods and options.token_secret is None:
        warn(
            "no --token-secret: sidecars in other pods will refuse this one's offline notifications"
            " (403), so consumers learn of a departure only from the registry; pass --token-secret"
            " NAME (a Secret whose key `token` is the fleet's token)"
        )
    changed = [doc.data != original for (_, doc), original in zip(documents, originals, strict=True)]
    return render(list(zip((doc for _, doc in documents), changed, strict=True)))


def objects(data: Any) -> Iterator[dict[str, Any]]:
    """The Kubernetes objects of one document: itself, or the items of a `kind: List`."""
    if not isinstance(data, dict):
        return
    if data.get("kind") == "List" and isinstance(data.get("items"), list):
        yield from (item for item in data["items"] if isinstance(item, dict))
    else:
        yield data


def inject_object(
    source: str,
    obj: dict[str, Any],
    options: InjectOptions,
    warn: Warn,
    h2c_ports: list[H2cServicePort],
) -> InjectedPod | None:
    """Inject the pod spec of a workload or Pod in place; None for any other object."""
    kind = obj.get("kind")
    if kind != "Pod" and kind not in WORKLOAD_KINDS:
        return None
    metadata = mapping(obj, "metadata", f"{source}: {kind}")
    name = str(metadata.get("name", "?"))
    where = f"{source}: {kind}/{name}"
    if kind == "Pod":
        pod_meta, spec = metadata, mapping(obj, "spec", where)
    else:
        template = mapping(mapping(obj, "spec", where), "template", where)
        pod_meta, spec = mapping(template, "metadata", where), mapping(template, "spec", where)
    labels = pod_meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise InjectError(f"{where}: metadata.labels is not a mapping")
    namespace = metadata.get("namespace")
    pod_labels = {str(k): str(v) for k, v in labels.items()}
    services = [port for port in h2c_ports if port.selects(namespace, pod_labels)]
    app_port, app_ports = inject_pod_spec(where, name, pod_meta, spec, options, warn, services)
    return InjectedPod(namespace, pod_labels, app_port, app_ports)


def inject_pod_spec(
    where: str,
    name: str,
    pod_meta: dict[str, Any],
    spec: dict[str, Any],
    options: InjectOptions,
    warn: Warn,
    h2c_ports: list[H2cServicePort],
) -> tuple[int, frozenset[str]]:
    """Add the sidecar to one pod spec; returns the app's port and the names it goes by.
    `h2c_ports`: the Service ports that declare HTTP/2 and select this pod."""
    containers = container_list(spec, "containers", where)
    if not containers:
        raise InjectError(f"{where}: no containers to put the sidecar beside")
    if any(runs_sidecar_exec(c) for c in containers):
        raise InjectError(f"{where}: a container already runs `graceful-sidecar exec`; inject it or not")
    app_port = options.app_port or first_port(containers[0])
    if app_port is None:
        raise InjectError(
            f"{where}: its first container declares no containerPort: say which port the app serves"
            " with --app-port"
        )
    if app_port in (options.listen_port, ADMIN_PORT):
        taken = "--listen-port" if app_port == options.listen_port else "admin port"
        raise InjectError(f"{where}: the app's port {app_port} is the sidecar's {taken}: it cannot be both")
    app = next((c for c in containers if app_port in declared_ports(c).values()), containers[0])
    app_name = f"{where} container {app.get('name', '?')}"
    init = container_list(spec, "initContainers", where)
    existing = next((c for c in init if c.get("name") == SIDECAR_NAME), None)
    names = frozenset(n for n, port in declared_ports(app).items() if port == app_port)
    h2c = speaks_h2c(app, app_port, names, previous_arg(existing, "--app"), h2c_ports, options.app_health)
    app_health = options.app_health
    if app_health is None:
        app_health = former_health_path(app, app_name, app_port, existing, warn, h2c == "grpc")
        try:  # a probe's path or service the sidecar would refuse at its start
            parse_health_path(app_health or "")
        except ValueError as exc:
            raise InjectError(f"{app_name}: its probe cannot be the sidecar's --app-health: {exc}") from None
    drain = options.drain_timeout if options.drain_timeout is not None else DEFAULT_DRAIN_SECONDS
    stop = options.stop_timeout if options.stop_timeout is not None else DEFAULT_STOP_SECONDS
    sidecar = sidecar_container(options, options.service or name, app_port, app_health, h2c is not None)
    if existing is None:
        init.append(sidecar)
    else:
        init[init.index(existing)] = merge_sidecar(sidecar, existing)
    spec["initContainers"] = init
    app["readinessProbe"] = {
        "httpGet": {"port": ADMIN_PORT, "path": "/ready"},
        # One failure is enough: /ready turns 503 when the drain starts, and the pod must leave
        # the Service's endpoints at once.
        "periodSeconds": 2,
        "failureThreshold": 1,
    }
    pre_stop = {"httpGet": {"port": ADMIN_PORT, "path": "/shutdown"}}
    lifecycle = app.setdefault("lifecycle", {})
    old = lifecycle.get("preStop")
    if old is not None and old != pre_stop:
        warn(
            f"{app_name}: its preStop hook {describe_handler(old)} is replaced by GET :{ADMIN_PORT}/shutdown"
        )
    lifecycle["preStop"] = pre_stop
    need = math.ceil(drain + stop + GRACE_MARGIN_SECONDS)
    grace = spec.get("terminationGracePeriodSeconds", K8S_DEFAULT_GRACE_SECONDS)
    if not isinstance(grace, int | float) or grace < need:
        spec["terminationGracePeriodSeconds"] = need
    annotations = pod_meta.setdefault("annotations", {})
    if not isinstance(annotations, dict):
        raise InjectError(f"{where}: metadata.annotations is not a mapping")
    # The app's own stop time: it documents the grace period's budget (tests/test_deploy.py).
    annotations[APP_STOP_ANNOTATION] = f"{stop:g}"
    return app_port, names


def sidecar_container(
    options: InjectOptions, service: str, app_port: int, app_health: str | None, h2c: bool = False
) -> dict[str, Any]:
    listen = options.listen_port
    args = [
        "run",
        "--service",
        service,
        "--listen",
        f"0.0.0.0:{listen}",
        "--advertise",
        f"$(POD_IP):{listen}",
    ]
    scheme = "h2c" if h2c else "http"
    args += ["--app", f"{scheme}://127.0.0.1:{app_port}", "--admin", f"0.0.0.0:{ADMIN_PORT}"]
    args += ["--advertise-admin", f"http://$(POD_IP):{ADMIN_PORT}"]
    # The kubelet's preStop comes from the node (see the module's docstring); --allow replaces the
    # loopback default, hence loopback again.
    args += ["--allow", "127.0.0.0/8", "--allow", "::1", "--allow", "$(HOST_IP)"]
    if app_health is not None:
        args += ["--app-health", app_health]
    if options.registry is not None:
        args += ["--registry", options.registry]
    if options.drain_timeout is not None:
        args += ["--drain-timeout", f"{options.drain_timeout:g}"]
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
    ]
    if options.token_secret is not None:
        secret = {"name": options.token_secret, "key": "token"}
        env.append({"name": "SIDECAR_TOKEN", "valueFrom": {"secretKeyRef": secret}})
    admin = SIDECAR_PORT_NAMES[1]
    return {
        "name": SIDECAR_NAME,
        "image": options.image or placeholder_image(),
        "restartPolicy": "Always",
        "args": args,
        "env": env,
        "ports": [
            {"name": SIDECAR_PORT_NAMES[0], "containerPort": listen},
            {"name": admin, "containerPort": ADMIN_PORT},
        ],
        # The app container starts once this passes: its readiness probe needs the admin API.
        "startupProbe": {
            "httpGet": {"port": admin, "path": "/live"},
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
        "readinessProbe": {
            "httpGet": {"port": admin, "path": "/ready"},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"port": admin, "path": "/live"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        # What the "restricted" Pod Security Standard asks. The root filesystem stays writable:
        # an explicit sqlite:// registry keeps its file in the container.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def merge_sidecar(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """The sidecar as inject writes it, keeping what a user added to an injected one (resources,
    securityContext, envFrom, mounts, other variables)."""
    merged = {
        **new,
        **{k: v for k, v in old.items() if k not in new or k in ("resources", "securityContext")},
    }
    others = [e for e in old.get("env") or [] if not (isinstance(e, dict) and e.get("name") in ENV_NAMES)]
    merged["env"] = [*new["env"], *others]
    return merged


def former_health_path(
    app: dict[str, Any],
    app_name: str,
    app_port: int,
    sidecar: dict[str, Any] | None,
    warn: Warn,
    grpc: bool = False,
) -> str | None:
    """The app's health check for --app-health: its readiness probe's path when that was an
    httpGet, `grpc[:SERVICE]` when it was a grpc probe (or, failing a readiness probe to take it
    from, its liveness probe was); on an injected pod (the probe is the sidecar's), what the
    sidecar was given before. A gRPC app (`grpc`) without either is checked with the gRPC health
    check rather than GET /health (None: the sidecar's default)."""
    liveness = grpc_action(app, "livenessProbe")
    fallback = grpc_health_arg(liveness) if liveness is not None else GRPC_HEALTH if grpc else None
    if fallback is None:
        polls, options = "polls GET /health on the app", "--app-health PATH"
    else:
        service = fallback.partition(":")[2]
        called = f'Health/Check("{service}")' if service else "Health/Check"
        polls, options = f"calls gRPC {called} on the app", "--app-health PATH or grpc:SERVICE"
    probe = app.get("readinessProbe")
    if not isinstance(probe, dict):
        if sidecar is not None:
            return previous_arg(sidecar, "--app-health")
        if liveness is None:
            warn(
                f"{app_name}: no readinessProbe to take the health path from; the sidecar {polls}"
                f" until {'2xx' if fallback is None else 'SERVING'} (pass {options}, or '' for none)"
            )
        return fallback
    action = grpc_action(app, "readinessProbe")
    if action is not None:
        port = action.get("port")
        if isinstance(port, int) and port != app_port:
            warn(
                f"{app_name}: its readinessProbe is on port {port}, not the app's {app_port}: the"
                f" sidecar checks gRPC health on port {app_port} (--app-health)"
            )
        return grpc_health_arg(action)
    action = probe.get("httpGet")
    if not isinstance(action, dict):
        warn(
            f"{app_name}: its readinessProbe {describe_handler(probe)} is replaced by the sidecar's /ready;"
            f" the sidecar {polls} (pass {options}, or '' for none)"
        )
        return fallback
    port = resolve_port(action.get("port"), app)
    if port == ADMIN_PORT:
        return previous_arg(sidecar, "--app-health")
    if port != app_port:
        warn(
            f"{app_name}: its readinessProbe is on port {action.get('port')}, not the app's {app_port}:"
            f" the sidecar polls {action.get('path', '/')} on port {app_port} (--app-health)"
        )
    path = action.get("path", "/")
    return str(path) if path else "/"
