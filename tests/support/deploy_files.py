"""Readers for deploy/: what the manifests, units and compose file make the sidecar do.

Each reader ends in the sidecar's own `Settings`, built by the real option parser and
`load_settings` from the argv and environment the platform would give the process (Kubernetes
`$(VAR)` expansion, envFrom a ConfigMap, a Secret; systemd's EnvironmentFile=). So a misspelt
flag or a bad value fails here as it would fail in the pod, and the timing checks use the drain
timeout the sidecar would really use, wherever it was set.

`check_stop_budget` is the one rule every platform shares: the time the platform allows for a
stop (terminationGracePeriodSeconds, TimeoutStopSec=, stop_grace_period) must cover the drain,
the app's own stop and a margin, or the platform's SIGKILL cuts the drain short.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.app.cli import build_parser
from sidecar.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"

# What a stop needs beyond the drain and the app's own stop: deregistration and notifications
# retried at the drain's end, the sidecar's own exit, the platform's reaction time.
MARGIN_SECONDS = 5.0
# kubelet: after a preStop hook, the container still gets at least this long before SIGKILL
# (minimumGracePeriodInSeconds in pkg/kubelet/kuberuntime).
KUBELET_MIN_GRACE_SECONDS = 2.0
# Pod annotation that states the app's own stop time (deploy/kubernetes/deployment.yaml).
APP_STOP_ANNOTATION = "graceful-sidecar/app-stop-seconds"
K8S_DEFAULT_GRACE_SECONDS = 30.0


class BudgetError(AssertionError):
    """The platform's stop limit is shorter than the drain, the app's stop and the margin."""


@dataclass(frozen=True, slots=True)
class StopBudget:
    limit_name: str  # "terminationGracePeriodSeconds in deployment.yaml"
    limit: float
    parts: tuple[tuple[str, float], ...]  # (where the value comes from, seconds)
    margin: float = MARGIN_SECONDS

    @property
    def needed(self) -> float:
        return sum(seconds for _, seconds in self.parts) + self.margin


def check_stop_budget(budget: StopBudget) -> None:
    """Raise BudgetError, naming every term, unless the limit covers the parts plus the margin."""
    if budget.limit >= budget.needed:
        return
    terms = " + ".join(f"{seconds:g} s ({name})" for name, seconds in budget.parts)
    raise BudgetError(
        f"{budget.limit_name} is {budget.limit:g} s, shorter than {terms} + {budget.margin:g} s margin"
        f" = {budget.needed:g} s: the platform would SIGKILL the pod before the drain and the app's"
        f" stop can finish. Raise {budget.limit_name} to at least {budget.needed:g} or lower the drain."
    )


# --- the sidecar's effective settings from an argv and an environment


def sidecar_settings(argv: Sequence[str], env: Mapping[str, str], where: str) -> Settings:
    """Settings of `graceful-sidecar ARGV...` (ARGV starting with run or exec) under `env`."""
    argv = list(argv)
    command: list[str] = []
    if argv[:1] == ["exec"] and "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(
            f"{where}: graceful-sidecar rejects {argv}: {errors.getvalue().strip()}"
        ) from None
    assert args.command in ("run", "exec"), f"{where}: expected run or exec, got {args.command}"
    return load_settings(vars(args), env=dict(env), command=command)


def drain_source(argv: Sequence[str], env: Mapping[str, str], env_origin: str) -> str:
    """Where the drain timeout of this argv and env comes from, for messages."""
    if any(arg == "--drain-timeout" or arg.startswith("--drain-timeout=") for arg in argv):
        return "--drain-timeout in the args"
    if "SIDECAR_DRAIN_TIMEOUT" in env:
        return f"SIDECAR_DRAIN_TIMEOUT in {env_origin}"
    return "the default --drain-timeout"


# --- Kubernetes


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one_of_kind(path: Path, kind: str) -> dict[str, Any]:
    found = [doc for doc in load_documents(path) if doc.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


_K8S_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_k8s(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's expansion of command, args and env values: $(VAR) if VAR is defined,
    $$ for a literal $, anything else left as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _K8S_VAR.sub(replace, text)


@dataclass(frozen=True, slots=True)
class HttpGet:
    port: int
    path: str
    headers: dict[str, str]
    scheme: str = "HTTP"


def resolve_http_get(action: Mapping[str, Any], container: Mapping[str, Any], where: str) -> HttpGet:
    """An httpGet handler with a named port resolved the way the kubelet does: against the ports
    of the container the handler belongs to."""
    port = action["port"]
    if isinstance(port, str) and not port.isdigit():
        numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
        assert numbers, f"{where}: port {port!r} is not a named port of container {container['name']}"
        port = numbers[0]
    headers = {header["name"]: header["value"] for header in action.get("httpHeaders", [])}
    return HttpGet(int(port), action.get("path", "/"), headers, action.get("scheme", "HTTP"))


@dataclass
class PodPlan:
    """One pod of a Deployment as the kubelet would run it, seen from the sidecar."""

    path: Path
    grace: float
    app_container: dict[str, Any]
    sidecar_container: dict[str, Any]
    native_sidecar: bool  # an init container with restartPolicy Always; else exec mode
    argv: list[str]  # after `graceful-sidecar`, $(VAR) expanded
    env: dict[str, str]
    settings: Settings
    pre_stop: HttpGet
    readiness: HttpGet
    app_stop: float  # the app's stop time after SIGTERM
    app_stop_source: str
    drain_source: str
    annotations: dict[str, str] = field(default_factory=dict)

    def budget(self) -> StopBudget:
        return StopBudget(
            f"terminationGracePeriodSeconds in {self.path.name}",
            self.grace,
            ((self.drain_source, self.settings.drain_timeout), (self.app_stop_source, self.app_stop)),
        )


def container_env(
    container: Mapping[str, Any],
    configmaps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
    fields: Mapping[str, str],
) -> dict[str, str]:
    """The environment the kubelet gives a container: envFrom first, then env in order (each
    value may use $(VAR) of the ones before it)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        data = configmaps if "configMapRef" in source else secrets
        assert ref["name"] in data, f"envFrom {ref['name']}: no such ConfigMap/Secret in deploy/kubernetes"
        env.update({source.get("prefix", "") + key: str(value) for key, value in data[ref["name"]].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand_k8s(str(item["value"]), env)
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            assert path in fields, f"env {item['name']}: fieldRef {path} not simulated"
            env[item["name"]] = fields[path]
        elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
            key_ref = ref.get("secretKeyRef") or ref["configMapKeyRef"]
            data = secrets if "secretKeyRef" in ref else configmaps
            assert key_ref["name"] in data, f"env {item['name']}: no {key_ref['name']} in deploy/kubernetes"
            assert key_ref["key"] in data[key_ref["name"]], f"env {item['name']}: no key {key_ref['key']}"
            env[item["name"]] = str(data[key_ref["name"]][key_ref["key"]])
        else:
            raise AssertionError(f"env {item['name']}: unsupported valueFrom {sorted(ref)}")
    return env


def kubernetes_objects() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """ConfigMaps and Secrets of deploy/kubernetes by name: {name: data}."""
    configmaps: dict[str, dict[str, str]] = {}
    secrets: dict[str, dict[str, str]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in load_documents(path):
            if doc["kind"] == "ConfigMap":
                configmaps[doc["metadata"]["name"]] = dict(doc.get("data", {}))
            elif doc["kind"] == "Secret":
                assert "data" not in doc, f"{path.name}: use stringData so the example stays readable"
                secrets[doc["metadata"]["name"]] = dict(doc.get("stringData", {}))
    return configmaps, secrets


def load_pod_plan(
    path: Path,
    pod_ip: str = "10.1.2.3",
    host_ip: str = "192.0.2.10",
    configmaps: Mapping[str, Mapping[str, str]] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> PodPlan:
    """Read a Deployment with the sidecar, native (deployment.yaml) or exec mode (-exec.yaml)."""
    if configmaps is None or secrets is None:
        configmaps, secrets = kubernetes_objects()
    deployment = one_of_kind(path, "Deployment")
    template = deployment["spec"]["template"]
    spec = template["spec"]
    annotations = dict(template.get("metadata", {}).get("annotations", {}))
    natives = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    containers = spec["containers"]
    if natives:
        assert len(natives) == 1, f"{path.name}: expected one native sidecar"
        assert len(containers) == 1, f"{path.name}: expected one app container"
        sidecar, app = natives[0], containers[0]
        # The image's ENTRYPOINT is graceful-sidecar (Dockerfile): args alone are its argv.
        assert "command" not in sidecar, f"{path.name}: keep the image's entrypoint"
        raw_argv = list(sidecar["args"])
    else:
        execs = [c for c in containers if c.get("command", [None])[0] == "graceful-sidecar"]
        assert len(execs) == 1, f"{path.name}: no native sidecar and no `graceful-sidecar exec` container"
        sidecar = app = execs[0]
        raw_argv = [*sidecar["command"][1:], *sidecar.get("args", [])]
    fields = {"status.podIP": pod_ip, "status.hostIP": host_ip, "metadata.name": "orders-abc12"}
    env = container_env(sidecar, configmaps, secrets, fields)
    argv = [expand_k8s(str(arg), env) for arg in raw_argv]
    settings = sidecar_settings(argv, env, path.name)
    if natives:
        assert APP_STOP_ANNOTATION in annotations, f"{path.name}: state the app's stop time in the pod"
        app_stop = float(annotations[APP_STOP_ANNOTATION])
        app_stop_source = f"the app's stop time, annotation {APP_STOP_ANNOTATION}"
    else:
        app_stop = settings.stop_timeout
        app_stop_source = "--stop-timeout" if "--stop-timeout" in argv else "the default --stop-timeout"
    pre_stop = app["lifecycle"]["preStop"]["httpGet"]
    readiness = app["readinessProbe"]["httpGet"]
    return PodPlan(
        path=path,
        grace=float(spec.get("terminationGracePeriodSeconds", K8S_DEFAULT_GRACE_SECONDS)),
        app_container=app,
        sidecar_container=sidecar,
        native_sidecar=bool(natives),
        argv=argv,
        env=env,
        settings=settings,
        pre_stop=resolve_http_get(pre_stop, app, f"{path.name} preStop"),
        readiness=resolve_http_get(readiness, app, f"{path.name} readinessProbe"),
        app_stop=app_stop,
        app_stop_source=app_stop_source,
        drain_source=drain_source(argv, env, "the ConfigMap"),
        annotations=annotations,
    )


# --- systemd


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit: {section: {key: [values in order]}}. Comments, continuation lines."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= format as used here: KEY=VALUE lines and # comments."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


def systemd_seconds(text: str) -> float:
    """A systemd time span: plain seconds or units such as 1min 30s."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * units[unit or "s"]
    return total


def unit_exec_argv(value: str) -> list[str]:
    """ExecStart=/ExecStop= command line without systemd's prefixes (-, @, :, +, !)."""
    return shlex.split(value.lstrip("-@:+!"))
