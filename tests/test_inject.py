"""`graceful-sidecar inject`, run as a process on realistic manifests (tests/manifests/): every
output document validates strictly, the sidecar's command line is read by the sidecar's own parser
with the environment the kubelet would give it, Services go through the sidecar, what is not a
workload comes out as it went in, and injecting twice is injecting once. (The kubelet's
termination of an injected pod is played in tests/test_kubelet_sequence.py.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from sidecar.config import HostPort, Settings
from tests.support import deploy_files as df

MANIFESTS = Path(__file__).resolve().parent / "manifests"
CASES = sorted(MANIFESTS.glob("*.yaml"))
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod")
POD_IP = "10.1.2.3"
TOKEN_SECRET = "fleet-token"
# What a fleet's inject command carries (README): the shared registry, the token's Secret, the
# image as pushed. Without them inject refuses (no registry) or warns.
REGISTRY = "consul://127.0.0.1:8500"
IMAGE = "registry.test/graceful-sidecar:1"
FLEET = ("--registry", REGISTRY, "--token-secret", TOKEN_SECRET, "--image", IMAGE)
# The gRPC workloads among the cases: their sidecar speaks h2c to the app.
GRPC_CASES = {"grpc-checkoutservice.yaml"}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def docs(self) -> list[Any]:
        assert self.code == 0, self.stderr
        return [doc for doc in yaml.safe_load_all(self.stdout) if doc is not None]


def inject(*args: str | Path, stdin: str = "") -> Run:
    """inject with the fleet's options (FLEET), then `args` (a flag given again wins)."""
    return inject_bare(*FLEET, *args, stdin=stdin)


def inject_bare(*args: str | Path, stdin: str = "") -> Run:
    argv = [sys.executable, "-m", "sidecar", "inject", *map(str, args)]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def injected() -> dict[str, Run]:
    """Each manifest injected once with the fleet's options and otherwise the defaults."""
    return {path.name: inject(path) for path in CASES}


def objects(docs: list[Any]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        yield from doc["items"] if doc.get("kind") == "List" else [doc]


def pod_specs(docs: list[Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(object, pod metadata, pod spec) of every workload."""
    for obj in objects(docs):
        if obj["kind"] == "Pod":
            yield obj, obj["metadata"], obj["spec"]
        elif obj["kind"] in WORKLOADS:
            template = obj["spec"]["template"]
            yield obj, template["metadata"], template["spec"]


def find(docs: list[Any], kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    return next(
        o
        for o in objects(docs)
        if (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) == (kind, name, namespace)
    )


def sidecar_of(spec: dict[str, Any]) -> dict[str, Any]:
    natives = [c for c in spec["initContainers"] if c["name"] == "graceful-sidecar"]
    assert len(natives) == 1
    return natives[0]


def sidecar_settings(spec: dict[str, Any]) -> tuple[Settings, list[str]]:
    """The injected sidecar's Settings, from its args and env as the kubelet would expand them."""
    container = sidecar_of(spec)
    fields = {"status.podIP": POD_IP, "status.hostIP": "192.0.2.10"}
    env = df.container_env(container, {}, {TOKEN_SECRET: {"token": "t0ken"}}, fields)
    argv = [df.expand_k8s(str(arg), env) for arg in container["args"]]
    return df.sidecar_settings(argv, env, "injected sidecar"), argv


def first_port(spec: dict[str, Any]) -> int:
    port: int = spec["containers"][0]["ports"][0]["containerPort"]
    return port


@pytest.mark.parametrize("case", CASES, ids=lambda path: path.name)
def test_output_validates_strictly_in_input_order(injected: dict[str, Run], case: Path) -> None:
    """Every output document passes strict validation (1.29 and newest), in the input's order."""
    docs = injected[case.name].docs()
    before = [(o["kind"], o["metadata"]["name"]) for o in objects(df.load_documents(case))]
    assert [(o["kind"], o["metadata"]["name"]) for o in objects(docs)] == before
    for doc in docs:
        if doc["kind"] == "List":  # no schema of its own (kubectl unpacks it): its items are validated
            assert set(doc) == {"apiVersion", "kind", "items"}
    for obj in objects(docs):
        for version in K8S_VERSIONS:
            assert kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("case", CASES, ids=lambda path: path.name)
def test_every_workload_gets_the_native_sidecar(injected: dict[str, Run], case: Path) -> None:
    """Each pod: the native sidecar (run, listen, advertise from POD_IP, app, admin, probes), the
    app's preStop and readiness on the sidecar, and a grace period covering the drain."""
    inputs = {o["metadata"]["name"]: spec for o, _, spec in pod_specs(df.load_documents(case))}
    found = list(pod_specs(injected[case.name].docs()))
    assert len(found) == len(inputs) > 0
    for obj, meta, spec in found:
        settings, argv = sidecar_settings(spec)
        app_port = first_port(inputs[obj["metadata"]["name"]])
        sidecar = sidecar_of(spec)
        assert sidecar["restartPolicy"] == "Always"
        assert argv[0] == "run"
        assert settings.service == obj["metadata"]["name"]
        assert settings.listen == HostPort("0.0.0.0", 8443)
        assert settings.advertise == HostPort(POD_IP, 8443)
        scheme = "h2c" if case.name in GRPC_CASES else "http"
        assert settings.app == f"{scheme}://127.0.0.1:{app_port}"
        assert settings.admin == HostPort("0.0.0.0", 16688)
        assert settings.advertise_admin == f"http://{POD_IP}:16688"
        probes = {
            key: df.resolve_http_get(sidecar[key]["httpGet"], sidecar, key)
            for key in sidecar
            if "Probe" in key
        }
        assert (probes["readinessProbe"].port, probes["readinessProbe"].path) == (16688, "/ready")
        assert (probes["livenessProbe"].port, probes["livenessProbe"].path) == (16688, "/live")
        app = next(c for c in spec["containers"] if app_port in [p["containerPort"] for p in c["ports"]])
        assert app["lifecycle"]["preStop"] == {"httpGet": {"port": 16688, "path": "/shutdown"}}
        assert app["readinessProbe"]["httpGet"] == {"port": 16688, "path": "/ready"}
        budget = df.StopBudget(
            "terminationGracePeriodSeconds",
            spec["terminationGracePeriodSeconds"],
            (
                ("drain", settings.drain_timeout),
                ("app stop", float(meta["annotations"][df.APP_STOP_ANNOTATION])),
            ),
        )
        df.check_stop_budget(budget)


def test_services_reaching_the_app_go_through_the_sidecar(injected: dict[str, Run]) -> None:
    """A Service of the same namespace whose selector matches and whose targetPort is the app's
    port (number, name, or port when targetPort is absent) targets the sidecar; others stay."""
    web = injected["deployment-service.yaml"].docs()
    assert find(web, "Service", "web", "shop")["spec"]["ports"][0]["targetPort"] == 8443
    assert find(web, "Service", "web", "staging")["spec"]["ports"][0]["targetPort"] == 8080
    ledger = injected["statefulset-named-ports.yaml"].docs()
    assert find(ledger, "Service", "ledger")["spec"]["ports"][0]["targetPort"] == 8443
    assert find(ledger, "Service", "ledger-metrics")["spec"]["ports"][0]["targetPort"] == "metrics"
    billing = injected["multi-document.yaml"].docs()
    assert find(billing, "Service", "billing")["spec"]["ports"][0] == {
        "name": "http",
        "port": 8000,
        "targetPort": 8443,
    }
    listed = injected["list.yaml"].docs()
    assert find(listed, "Service", "node-agent")["spec"]["ports"][0]["targetPort"] == 8443


def test_app_health_is_the_former_readiness_path(injected: dict[str, Run]) -> None:
    """An httpGet readiness path (by number or port name) becomes --app-health; without one the
    sidecar's default stays; the app's liveness probe is left alone."""
    web = find(injected["deployment-service.yaml"].docs(), "Deployment", "web", "shop")["spec"]["template"][
        "spec"
    ]
    assert sidecar_settings(web)[0].app_health == "/status/ready"
    assert web["containers"][0]["livenessProbe"]["httpGet"] == {"port": 8080, "path": "/status/live"}
    ledger = find(injected["statefulset-named-ports.yaml"].docs(), "StatefulSet", "ledger")["spec"][
        "template"
    ]
    assert sidecar_settings(ledger["spec"])[0].app_health == "/healthz"
    billing = find(injected["multi-document.yaml"].docs(), "Deployment", "billing")["spec"]["template"]
    assert "--app-health" not in sidecar_of(billing["spec"])["args"]


def test_grace_period_is_raised_never_lowered() -> None:
    """terminationGracePeriodSeconds becomes at least drain + stop + 5 s; a longer one stays."""
    defaults = inject(MANIFESTS / "deployment-service.yaml", MANIFESTS / "multi-document.yaml").docs()
    assert (
        find(defaults, "Deployment", "web", "shop")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        == 60
    )
    billing = find(defaults, "Deployment", "billing")["spec"]["template"]["spec"]
    assert billing["terminationGracePeriodSeconds"] == 25 + 10 + 5
    longer = inject(
        "--drain-timeout", "50", "--stop-timeout", "20.5", MANIFESTS / "deployment-service.yaml"
    ).docs()
    web = find(longer, "Deployment", "web", "shop")["spec"]["template"]
    assert web["spec"]["terminationGracePeriodSeconds"] == 76  # 75.5, rounded up
    assert sidecar_settings(web["spec"])[0].drain_timeout == 50
    assert web["metadata"]["annotations"][df.APP_STOP_ANNOTATION] == "20.5"


def test_other_documents_come_out_as_written(injected: dict[str, Run]) -> None:
    """The ConfigMap, comments and block scalar included, is the very text of the input."""
    source = (MANIFESTS / "multi-document.yaml").read_text()
    config_map = source.split("\n---\n")[0] + "\n"
    assert injected["multi-document.yaml"].stdout.startswith(config_map + "---\n")


def test_a_former_prestop_is_replaced_with_a_warning(injected: dict[str, Run]) -> None:
    """The app's exec preStop and tcpSocket readiness are replaced, each named on stderr."""
    run = injected["pod-exec-prestop.yaml"]
    (pod,) = run.docs()
    assert pod["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]["path"] == "/shutdown"
    warnings = run.stderr.splitlines()
    assert len(warnings) == 2, run.stderr
    assert any("preStop hook (exec: sh -c sleep 15) is replaced" in line for line in warnings)
    assert any("readinessProbe (tcpSocket) is replaced" in line for line in warnings)
    assert all(
        line.startswith("graceful-sidecar inject: warning: ") and "Pod/worker" in line for line in warnings
    )


@pytest.mark.parametrize("case", CASES, ids=lambda path: path.name)
def test_injecting_twice_is_injecting_once(injected: dict[str, Run], case: Path) -> None:
    """inject of inject's output is the same text, with no warning."""
    once = injected[case.name]
    twice = inject(stdin=once.stdout)
    assert (twice.code, twice.stderr) == (0, "")
    assert twice.stdout == once.stdout


def test_options_reach_the_manifest() -> None:
    """--image, --registry, --listen-port, --token-secret, --service and --app-port end up in
    the sidecar, its env and the Service; stdin (`-`) and files are read in order."""
    argv = [
        "--image",
        "example.org/gs:9",
        "--registry",
        "consul://consul.example:8500",
        "--listen-port",
        "9443",
    ]
    argv += ["--token-secret", TOKEN_SECRET, "--service", "shop-web", "--app-port", "8080"]
    pod = (MANIFESTS / "pod-exec-prestop.yaml").read_text()
    docs = inject(*argv, MANIFESTS / "deployment-service.yaml", "-", stdin=pod).docs()
    assert [o["kind"] for o in docs] == ["Deployment", "Service", "Service", "Pod"]
    web = docs[0]["spec"]["template"]["spec"]
    settings, _ = sidecar_settings(web)
    assert sidecar_of(web)["image"] == "example.org/gs:9"
    assert (settings.registry, settings.service, settings.token) == (
        "consul://consul.example:8500",
        "shop-web",
        "t0ken",
    )
    assert settings.listen == HostPort("0.0.0.0", 9443)
    assert docs[1]["spec"]["ports"][0]["targetPort"] == 9443
    # --app-port 8080 is no port of the Pod's: its only container is the app all the same.
    assert sidecar_settings(docs[3]["spec"])[0].app == "http://127.0.0.1:8080"


NO_CONTAINERS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: empty}
spec:
  selector: {matchLabels: {app: empty}}
  template:
    metadata: {labels: {app: empty}}
    spec: {containers: []}
"""
NO_PORT = NO_CONTAINERS.replace("containers: []", "containers: [{name: a, image: a}]")
NO_PROBE = NO_CONTAINERS.replace("empty", "bare").replace(
    "containers: []", "containers: [{name: app, image: a, ports: [{containerPort: 8080}]}]"
)
BAD_GRPC_SERVICE = NO_PORT.replace(
    "image: a}",
    "image: a, ports: [{containerPort: 5050}], readinessProbe: {grpc: {port: 5050, service: 'a b'}}}",
)
GOOD_THEN_BAD = (MANIFESTS / "list.yaml").read_text() + "---\n" + NO_PORT


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        ((), "kind: Pod\nmetadata: {name: x\n", "<stdin>: not valid YAML"),
        ((), "a: [1, 2\n", "line 2"),
        ((), NO_CONTAINERS, "Deployment/empty: no containers"),
        ((), GOOD_THEN_BAD, "Deployment/empty: its first container declares no containerPort"),
        (("--listen-port", "8000"), (MANIFESTS / "multi-document.yaml").read_text(), "8000 is the sidecar's"),
        ((df.KUBERNETES / "deployment-exec.yaml",), "", "already runs `graceful-sidecar exec`"),
        ((MANIFESTS / "missing.yaml",), "", "missing.yaml: cannot read it"),
        (
            (),
            BAD_GRPC_SERVICE,
            "Deployment/empty container a: its probe cannot be the sidecar's --app-health: expected grpc:",
        ),
    ],
    ids=[
        "yaml",
        "yaml-line",
        "no-containers",
        "no-port",
        "port-clash",
        "exec-variant",
        "missing-file",
        "grpc-service-with-space",
    ],
)
def test_what_it_cannot_handle_is_one_line_and_exit_2(args: tuple[Any, ...], stdin: str, says: str) -> None:
    """Bad YAML or an unusable workload: one line on stderr, exit 2, nothing on stdout."""
    run = inject(*args, stdin=stdin)
    assert (run.code, run.stdout) == (2, "")
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith("graceful-sidecar inject: ")
    assert says in run.stderr


ALIASED = """
apiVersion: v1
kind: Pod
metadata: {name: shared}
spec:
  containers:
    - name: app
      image: a
      ports: [{containerPort: 8080}]
      lifecycle: &hooks {postStart: {exec: {command: [x]}}}
    - {name: helper, image: b, lifecycle: *hooks}
"""


def test_a_yaml_alias_does_not_carry_the_hook_to_another_container() -> None:
    """Two containers sharing hooks through a YAML alias: only the app's gets the preStop."""
    (pod,) = inject(stdin=ALIASED).docs()
    app, helper = pod["spec"]["containers"]
    assert "preStop" in app["lifecycle"]
    assert helper["lifecycle"] == {"postStart": {"exec": {"command": ["x"]}}}


def test_app_port_option_handles_a_container_without_ports() -> None:
    """The workload without a containerPort is injected once --app-port says the port."""
    (deployment,) = inject("--app-port", "3000", stdin=NO_PORT).docs()
    assert sidecar_settings(deployment["spec"]["template"]["spec"])[0].app == "http://127.0.0.1:3000"


def test_without_registry_it_refuses() -> None:
    """No --registry: exit 2, one line saying why (each pod would keep a registry of its own),
    nothing on stdout."""
    run = inject_bare("--token-secret", TOKEN_SECRET, "--image", IMAGE, MANIFESTS / "deployment-service.yaml")
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr.startswith("graceful-sidecar inject: --registry is required: ")
    assert len(run.stderr.splitlines()) == 1, run.stderr


def test_an_explicit_sqlite_registry_is_taken_as_meant() -> None:
    """An explicit sqlite:// registry is a choice, not an omission: injected, no warning."""
    run = inject("--registry", "sqlite:///tmp/graceful-sidecar.db", MANIFESTS / "deployment-service.yaml")
    (settings, _), *_ = [sidecar_settings(spec) for _, _, spec in pod_specs(run.docs())]
    assert settings.registry == "sqlite:///tmp/graceful-sidecar.db"
    assert run.stderr == ""


def test_missing_token_secret_and_image_are_warned_once() -> None:
    """Without --token-secret and --image it injects, and warns once for each (whatever the number
    of workloads): notifications would be refused, and the placeholder image does not exist."""
    files = (MANIFESTS / "deployment-service.yaml", MANIFESTS / "multi-document.yaml")
    run = inject_bare("--registry", REGISTRY, *files)
    assert len(list(pod_specs(run.docs()))) > 1
    warnings = run.stderr.splitlines()
    assert [line for line in warnings if "no --token-secret" in line] == [
        "graceful-sidecar inject: warning: no --token-secret: sidecars in other pods will refuse this"
        " one's offline notifications (403), so consumers learn of a departure only from the registry;"
        " pass --token-secret NAME (a Secret whose key `token` is the fleet's token)"
    ]
    assert (
        len([line for line in warnings if line.startswith("graceful-sidecar inject: warning: no --image: ")])
        == 1
    )


def test_a_workload_without_readiness_probe_is_warned_of_health() -> None:
    """A workload with no readiness probe to take the health path from: a warning that the sidecar
    will poll GET /health, and how to change it; injecting the output again warns no more."""
    run = inject(stdin=NO_PROBE)
    assert run.stderr.splitlines() == [
        "graceful-sidecar inject: warning: <stdin>: Deployment/bare container app: no readinessProbe"
        " to take the health path from; the sidecar polls GET /health on the app until 2xx (pass"
        " --app-health PATH, or '' for none)"
    ]
    assert inject(stdin=run.stdout).stderr == ""


def test_readme_example_is_real_output() -> None:
    """The README's inject example is what inject prints for deploy/kubernetes/inject/orders.yaml."""
    readme = (df.REPO / "README.md").read_text()
    section = readme.split("## Adopting it in Kubernetes", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```\n(graceful-sidecar inject [^\n]*?)(?: \| kubectl apply -f -)?\n```", section)
    assert command is not None, "the section shows the inject command"
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    args = command.group(1).split()[2:]
    run = inject_bare(*[df.REPO / a if a.endswith(".yaml") else a for a in args])
    assert run.stderr == "", "the README's command is complete: no warning"
    output = run.stdout.splitlines()
    lines = iter(output)
    for line in example.group(1).splitlines():
        if line.strip().startswith("# ..."):  # an elision in the excerpt
            continue
        assert any(out == line for out in lines), f"README line not in the output (in order): {line!r}"


def test_a_grpc_workload_speaks_h2c_to_the_app_and_checks_grpc_health(injected: dict[str, Run]) -> None:
    """Online Boutique's checkoutservice (grpc probes, Service port grpc): --app h2c://, the gRPC
    health check, readiness on the sidecar's /ready, liveness left on the app, the Service
    through the sidecar, and no warning."""
    run = injected["grpc-checkoutservice.yaml"]
    assert run.stderr == ""
    docs = run.docs()
    spec = find(docs, "Deployment", "checkoutservice")["spec"]["template"]["spec"]
    settings, _ = sidecar_settings(spec)
    assert settings.app == "h2c://127.0.0.1:5050"
    assert settings.app_h2c
    assert (settings.app_health, settings.app_health_grpc) == ("grpc", "")
    (app,) = spec["containers"]
    assert app["readinessProbe"]["httpGet"] == {"port": 16688, "path": "/ready"}
    assert app["livenessProbe"] == {"grpc": {"port": 5050}}
    assert app["lifecycle"]["preStop"] == {"httpGet": {"port": 16688, "path": "/shutdown"}}
    assert find(docs, "Service", "checkoutservice")["spec"]["ports"] == [
        {"name": "grpc", "port": 5050, "targetPort": 8443}
    ]


def grpc_pod(ports: str, probes: str = "") -> str:
    """A Pod `shop` (label app: shop) whose container `server` has these ports and probes."""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: shop, labels: {{app: shop}}}}
spec:
  containers:
    - name: server
      image: shop
      ports: {ports}
{probes}
"""


def shop_service(target: int | str, protocol: str | None = None, name: str | None = None) -> str:
    """A Service `shop` (selecting app: shop) whose one port targets `target`, with that
    appProtocol and name when given."""
    port: dict[str, Any] = {"port": 80, "targetPort": target}
    port |= {"appProtocol": protocol} if protocol else {}
    port |= {"name": name} if name else {}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop"}}
    service["spec"] = {"selector": {"app": "shop"}, "ports": [port]}
    return "---\n" + yaml.safe_dump(service)


PORT_5050 = "[{containerPort: 5050}]"
NAMED_5050 = "[{{name: {name}, containerPort: 5050}}]"


@pytest.mark.parametrize(
    ("stdin", "app", "health"),
    [
        (grpc_pod(NAMED_5050.format(name="grpc")), "h2c", "grpc"),
        (grpc_pod(NAMED_5050.format(name="grpc-api")), "h2c", "grpc"),
        (grpc_pod(NAMED_5050.format(name="http2")), "h2c", None),
        (grpc_pod(NAMED_5050.format(name="h2c")), "h2c", None),
        (grpc_pod(NAMED_5050.format(name="grpc-web")), "http", None),
        (grpc_pod(PORT_5050) + shop_service(5050, "grpc"), "h2c", "grpc"),
        (grpc_pod(PORT_5050) + shop_service(5050, "kubernetes.io/h2c"), "h2c", None),
        (
            grpc_pod(NAMED_5050.format(name="api")) + shop_service("api", "h2c"),
            "h2c",
            None,
        ),
        (grpc_pod(PORT_5050) + shop_service(5050, "http"), "http", None),
        (
            grpc_pod(PORT_5050) + shop_service(5050, "http", name="grpc"),
            "http",
            None,
        ),
        (
            grpc_pod(PORT_5050) + shop_service(5050, name="grpc-api"),
            "h2c",
            "grpc",
        ),
        (
            grpc_pod(PORT_5050, "      readinessProbe: {grpc: {port: 5050, service: cart}}"),
            "h2c",
            "grpc:cart",
        ),
        (
            grpc_pod(PORT_5050, "      livenessProbe: {grpc: {port: 5050, service: shop.Live}}"),
            "h2c",
            "grpc:shop.Live",
        ),
        (
            grpc_pod(
                NAMED_5050.format(name="grpc"),
                "      readinessProbe: {httpGet: {port: 5050, path: /ready}}",
            ),
            "h2c",
            "/ready",
        ),
    ],
    ids=[
        "port-grpc",
        "port-grpc-named",
        "port-http2",
        "port-h2c",
        "port-grpc-web-is-http1",
        "service-appprotocol-grpc",
        "service-appprotocol-k8s-h2c",
        "service-appprotocol-h2c-by-port-name",
        "service-appprotocol-http",
        "service-appprotocol-http-wins-over-name-grpc",
        "service-port-named-grpc",
        "readiness-grpc-service",
        "liveness-grpc-service",
        "grpc-port-with-httpget-readiness",
    ],
)
def test_what_tells_an_h2c_app(stdin: str, app: str, health: str | None) -> None:
    """A port named grpc/h2c/http2 (grpc-web is HTTP/1.1), a Service port's appProtocol, or a grpc
    probe gives --app h2c://; a grpc probe's service (or a gRPC port alone) gives
    --app-health grpc[:SERVICE]; injecting the output again changes nothing."""
    run = inject(stdin=stdin)
    pod = find(run.docs(), "Pod", "shop")
    settings, argv = sidecar_settings(pod["spec"])
    assert settings.app == f"{app}://127.0.0.1:5050"
    if health is None:
        assert "--app-health" not in argv
    else:
        assert settings.app_health == health
    assert inject(stdin=run.stdout).stdout == run.stdout


def test_a_grpc_app_without_probe_is_warned_of_the_grpc_check() -> None:
    """A gRPC port without a readiness probe: the sidecar calls the gRPC health check, and the
    warning says so and how to change it."""
    run = inject(stdin=grpc_pod(NAMED_5050.format(name="grpc")))
    assert run.stderr.splitlines() == [
        "graceful-sidecar inject: warning: <stdin>: Pod/shop container server: no readinessProbe"
        " to take the health path from; the sidecar calls gRPC Health/Check on the app until SERVING"
        " (pass --app-health PATH or grpc:SERVICE, or '' for none)"
    ]


def test_inject_app_health_grpc_makes_the_app_h2c() -> None:
    """`inject --app-health grpc:cart` on a plain HTTP workload: the sidecar is told the app
    speaks h2c, since the gRPC health check needs it."""
    run = inject("--app-health", "grpc:cart", stdin=grpc_pod(PORT_5050))
    settings, _ = sidecar_settings(find(run.docs(), "Pod", "shop")["spec"])
    assert (settings.app, settings.app_health) == ("h2c://127.0.0.1:5050", "grpc:cart")
