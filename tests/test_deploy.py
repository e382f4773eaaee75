"""deploy/ and the Dockerfile say what the design says, and agree with each other.

Static where no engine runs here: hadolint on the Dockerfile, kubernetes-validate (strict, the
JSON schemas it ships) on the manifests, systemd-analyze on the units. Beyond the schemas, every
sidecar command line is read by the sidecar's own parser with the environment the platform
would give it, and the stop budgets are checked on the values the sidecar would really use.
The image's HEALTHCHECK command runs for real against a live sidecar.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from sidecar.config import HostPort, Settings, parse_host_port
from tests.support import deploy_files as df
from tests.support.procs import sidecar

REPO = df.REPO
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOYMENT = df.KUBERNETES / "deployment.yaml"
DEPLOYMENT_EXEC = df.KUBERNETES / "deployment-exec.yaml"
COMPOSE = df.DEPLOY / "compose" / "compose.yaml"
SYSTEMD = df.DEPLOY / "systemd"
ADMIN_PORT = 16688  # the design's admin port
# Native sidecars (restartPolicy Always on an init container) are on by default from 1.29.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
TOOL_TIMEOUT = 60


def venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (the venv's bin)."""
    path = Path(sysconfig.get_path("scripts")) / name
    assert path.exists(), f"{name} not found in {path.parent}: pip install -e '.[test]'"
    return str(path)


# --- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    """hadolint finds nothing in the Dockerfile, at any severity, inline ignores disabled."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")  # and no user config from $HOME
    result = subprocess.run(
        [venv_tool("hadolint"), "-c", str(config), "--disable-ignore-pragma", "-f", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=1)
    assert result.returncode == 0, result.stderr


def test_dockerfile_shape() -> None:
    """Multi-stage: the wheel built on python:3.11 (a C compiler, for the compiled data path),
    the final stage python:3.11-slim, both on Debian bookworm; offline, non-root, exec-form,
    on 16688."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    froms = [rest.split() for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: build the wheel apart from the runtime"
    assert froms[0] == ["python:3.11-bookworm", "AS", "build"], froms
    assert froms[-1] == ["python:3.11-slim-bookworm"], froms  # the same Debian: the same libc
    assert "setup.py" in " ".join(rest for keyword, rest in instructions if keyword == "COPY")
    stage = final_stage()
    args = dict(rest.split("=", 1) for keyword, rest in stage if keyword == "ARG" and "=" in rest)
    runs = " ".join(rest for keyword, rest in stage if keyword == "RUN")
    assert "--no-index" in runs
    assert "from=build" in runs
    assert not re.search(r"\b(apt-get|gcc|build-essential)\b", runs), "no build tools in the final stage"
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1])
    assert user.isdigit(), f"USER {user}: numeric, so runAsNonRoot can check it"
    assert int(user) != 0, "USER must not be root"
    assert ("EXPOSE", str(ADMIN_PORT)) in stage
    entrypoint = [rest for keyword, rest in stage if keyword == "ENTRYPOINT"]
    cmd = [rest for keyword, rest in stage if keyword == "CMD"]
    assert json.loads(entrypoint[-1]) == ["graceful-sidecar"], "exec form: the sidecar is PID 1"
    assert json.loads(cmd[-1])[0] in ("run", "exec")
    assert "SIDECAR_ADMIN=0.0.0.0:16688" in " ".join(rest for keyword, rest in stage if keyword == "ENV")


def healthcheck_argv() -> list[str]:
    stage = final_stage()
    (check,) = [rest for keyword, rest in stage if keyword == "HEALTHCHECK"]
    _, sep, command = check.partition("CMD ")
    assert sep, "HEALTHCHECK ... CMD [...]"
    argv: list[str] = json.loads(command)  # exec form: slim has no shell tools worth relying on
    assert argv[0] == "python"
    assert "/live" in argv[-1]
    return argv


def test_healthcheck_probes_live(tmp_path: Path) -> None:
    """The HEALTHCHECK command passes against a live sidecar's /live and fails once it is gone."""
    argv = [sys.executable, *healthcheck_argv()[1:]]
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    with sidecar(tmp_path, registry, None, service="healthcheck", wait="live") as car:
        env = {"SIDECAR_ADMIN": f"0.0.0.0:{car.admin_port}", "PATH": "/usr/bin:/bin"}
        healthy = subprocess.run(argv, env=env, capture_output=True, timeout=TOOL_TIMEOUT)
        assert healthy.returncode == 0, healthy.stderr
    unhealthy = subprocess.run(argv, env=env, capture_output=True, timeout=TOOL_TIMEOUT)
    assert unhealthy.returncode != 0


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus **) as a regex over a relative path."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def build_context(root: Path) -> set[str]:
    """The files `docker build` would send: the last matching rule wins, and a rule that matches
    a directory matches everything under it."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, dockerignore_regex(line.lstrip("!").strip("/"))))
    kept: set[str] = set()
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        parts = relative.split("/")
        ancestors = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negate, regex in rules:
            if any(regex.fullmatch(candidate) for candidate in ancestors):
                excluded = not negate
        if not excluded:
            kept.add(relative)
    return kept


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    """The build context holds what the wheel build needs and nothing else."""
    context = build_context(REPO)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    for package in pyproject["tool"]["setuptools"]["packages"]:
        needed += [p.relative_to(REPO).as_posix() for p in (REPO / package).glob("*.py")]
    assert not [name for name in needed if name not in context], "missing from the build context"
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert any(name == source or name.startswith(source + "/") for name in context), source
    unwanted = ("tests/", ".git/", ".venv/", ".tools/", "__pycache__", "deploy/", ".pyc")
    assert not [name for name in context if any(part in name for part in unwanted)]


# --- Kubernetes


def manifest_files() -> list[Path]:
    return sorted(df.KUBERNETES.glob("*.yaml"))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_manifests_validate_strictly(path: Path, version: str) -> None:
    """Every object in deploy/kubernetes passes strict schema validation (1.29 and newest)."""
    for doc in df.load_documents(path):
        assert kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The validator is not a no-op: a misspelt restartPolicy fails it."""
    doc = df.one_of_kind(DEPLOYMENT, "Deployment")
    broken = copy.deepcopy(doc)
    native = broken["spec"]["template"]["spec"]["initContainers"][0]
    native["restartPolicyy"] = native.pop("restartPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def secret_token() -> str:
    _, secrets = df.kubernetes_objects()
    return secrets["graceful-sidecar-token"]["token"]


def test_native_sidecar_settings() -> None:
    """deployment.yaml gives the native sidecar the design's ports, pod IP, token and registry."""
    plan = df.load_pod_plan(DEPLOYMENT, pod_ip="10.1.2.3")
    settings = plan.settings
    assert plan.native_sidecar
    assert plan.argv[0] == "run"
    assert settings.admin == HostPort("0.0.0.0", ADMIN_PORT)
    assert settings.listen == HostPort("0.0.0.0", 8443)
    assert settings.advertise == HostPort("10.1.2.3", 8443)
    assert settings.advertise_admin == f"http://10.1.2.3:{ADMIN_PORT}"
    assert settings.app == "http://127.0.0.1:8080"
    assert settings.token == secret_token()
    assert settings.registry.startswith("consul://")
    assert settings.service == "orders"
    assert settings.drain_timeout == 25
    sidecar_ports = {p["containerPort"] for p in plan.sidecar_container["ports"]}
    assert {settings.listen.port, ADMIN_PORT} <= sidecar_ports
    app_ports = {p["containerPort"] for p in plan.app_container["ports"]}
    assert urlsplit(settings.app).port in app_ports
    assert next(e for e in plan.sidecar_container["env"] if e["name"] == "POD_IP")["valueFrom"] == {
        "fieldRef": {"fieldPath": "status.podIP"}
    }


def test_exec_variant_settings() -> None:
    """deployment-exec.yaml runs /app/startup.sh under `graceful-sidecar exec` with a stop timeout."""
    plan = df.load_pod_plan(DEPLOYMENT_EXEC, pod_ip="10.1.2.3")
    spec = df.one_of_kind(DEPLOYMENT_EXEC, "Deployment")["spec"]["template"]["spec"]
    assert not plan.native_sidecar
    assert "initContainers" not in spec
    assert len(spec["containers"]) == 1
    assert plan.argv[0] == "exec"
    assert plan.settings.command == ("/app/startup.sh",)
    assert plan.settings.admin == HostPort("0.0.0.0", ADMIN_PORT)
    assert plan.settings.advertise == HostPort("10.1.2.3", 8443)
    assert plan.settings.token == secret_token()
    assert plan.settings.stop_timeout == 10


@pytest.mark.parametrize("path", [DEPLOYMENT, DEPLOYMENT_EXEC], ids=lambda path: path.name)
def test_probes_and_prestop_target_the_sidecar(path: Path) -> None:
    """preStop is GET :16688/shutdown with the Secret's token; readiness is :16688/ready."""
    plan = df.load_pod_plan(path)
    assert plan.pre_stop.port == plan.settings.admin.port == ADMIN_PORT
    assert plan.pre_stop.path == "/shutdown"
    assert plan.pre_stop.scheme == "HTTP"
    assert plan.pre_stop.headers == {"Authorization": f"Bearer {secret_token()}"}, (
        "the preStop header must carry the Secret's token, or /shutdown answers 403 and nothing drains"
    )
    assert (plan.readiness.port, plan.readiness.path) == (ADMIN_PORT, "/ready")


@pytest.mark.parametrize("path", [DEPLOYMENT, DEPLOYMENT_EXEC], ids=lambda path: path.name)
def test_grace_period_covers_the_drain(path: Path) -> None:
    """terminationGracePeriodSeconds >= the sidecar's drain timeout + the app's stop + margin."""
    df.check_stop_budget(df.load_pod_plan(path).budget())


def test_budget_check_rejects_an_inconsistent_copy(tmp_path: Path) -> None:
    """A short grace period or a long ConfigMap drain fails the budget check, naming the terms."""
    docs = df.load_documents(DEPLOYMENT)
    docs[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    short = tmp_path / "deployment.yaml"
    short.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(df.BudgetError) as short_grace:
        df.check_stop_budget(df.load_pod_plan(short).budget())
    message = str(short_grace.value)
    assert "terminationGracePeriodSeconds in deployment.yaml is 30 s" in message
    assert "25 s (SIDECAR_DRAIN_TIMEOUT in the ConfigMap)" in message
    assert "= 40 s" in message

    configmaps, secrets = df.kubernetes_objects()
    configmaps["orders-sidecar"] = {**configmaps["orders-sidecar"], "SIDECAR_DRAIN_TIMEOUT": "60"}
    plan = df.load_pod_plan(DEPLOYMENT, configmaps=configmaps, secrets=secrets)
    with pytest.raises(df.BudgetError, match="60 s"):
        df.check_stop_budget(plan.budget())


def test_host_ip_alternative_in_the_comments_works(tmp_path: Path) -> None:
    """The commented --allow $(HOST_IP)/32 alternative, uncommented, allows loopback and node."""
    text = re.sub(
        r"^(\s*)#\s+- (--allow|127\.0\.0\.0/8|\$\(HOST_IP\)/32)$",
        r"\1- \2",
        DEPLOYMENT.read_text(),
        flags=re.M,
    )
    docs = [doc for doc in yaml.safe_load_all(text) if doc]
    native = docs[0]["spec"]["template"]["spec"]["initContainers"][0]
    native["env"].append({"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}})
    copy_path = tmp_path / "deployment.yaml"
    copy_path.write_text(yaml.safe_dump_all(docs))
    settings = df.load_pod_plan(copy_path, host_ip="192.0.2.10").settings
    assert set(settings.allow) == {ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("192.0.2.10/32")}


def test_sidecar_runs_as_the_image_user() -> None:
    """The sidecar container runs as non-root with the Dockerfile's uid, on a read-only root."""
    args = dict(rest.split("=", 1) for keyword, rest in final_stage() if keyword == "ARG" and "=" in rest)
    context = df.load_pod_plan(DEPLOYMENT).sidecar_container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert str(context["runAsUser"]) == args["APP_UID"]


# --- compose


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment with compose's ${VAR:-default} taken at its default."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for key, value in env.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_sidecars(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Settings]]:
    for name, service in compose["services"].items():
        command = service.get("command")
        if "entrypoint" not in service and command and command[0] in ("run", "exec"):
            yield name, service, df.sidecar_settings(command, compose_env(service), f"compose {name}")


def test_compose_services(compose: dict[str, Any]) -> None:
    """compose.yaml has Consul in dev mode, two providers and a consumer from the Dockerfile."""
    services = compose["services"]
    consul = services["consul"]
    assert re.fullmatch(r"hashicorp/consul:1(\.\d+)*", consul["image"])
    assert "-dev" in consul["command"]
    assert "healthcheck" in consul
    sidecars = list(compose_sidecars(compose))
    providers = [name for name, _, settings in sidecars if settings.listen is not None]
    consumers = [name for name, _, settings in sidecars if settings.upstream]
    assert len(providers) == 2
    assert len(consumers) == 1
    for name, service in services.items():
        if name != "consul":
            build = service["build"]
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_sidecars_use_consul_and_stop_gracefully(compose: dict[str, Any]) -> None:
    """Every compose sidecar uses consul://consul:8500 and has a grace period over its drain."""
    for name, service, settings in compose_sidecars(compose):
        assert settings.registry == "consul://consul:8500", name
        assert service["depends_on"]["consul"] == {"condition": "service_healthy"}, name
        grace = df.systemd_seconds(service["stop_grace_period"])
        df.check_stop_budget(
            df.StopBudget(
                f"stop_grace_period of {name}",
                grace,
                (
                    (
                        df.drain_source(service["command"], compose_env(service), "compose"),
                        settings.drain_timeout,
                    ),
                ),
            )
        )


def test_compose_providers_are_pods(compose: dict[str, Any]) -> None:
    """Each provider sidecar shares its app's namespace, stops before it, and is addressable."""
    services = compose["services"]
    host_ports: list[str] = []
    instance_ids = set()
    for name, service, settings in compose_sidecars(compose):
        if settings.listen is None:
            continue
        mode = service["network_mode"]
        assert mode.startswith("service:"), name
        owner = mode.removeprefix("service:")
        app = services[owner]
        assert app["entrypoint"] == ["python", "-m", "sidecar.demo.app"]
        app_port = int(app["command"][app["command"].index("--port") + 1])
        assert settings.app == f"http://127.0.0.1:{app_port}"
        assert settings.advertise == HostPort(owner, settings.listen.port)
        assert settings.advertise_admin == f"http://{owner}:{settings.admin.port}"
        assert owner in service["depends_on"], f"{name} must depend on {owner} to stop before it"
        published = [port for port in app.get("ports", []) if port.endswith(f":{settings.admin.port}")]
        assert len(published) == 1, f"{owner} publishes {name}'s admin port"
        host_ports.append(published[0].rsplit(":", 1)[0])
        instance_ids.add(settings.instance_id)
    assert len(set(host_ports)) == len(host_ports) == 2
    assert len(instance_ids) == 2


def test_compose_consumer_reaches_the_providers(compose: dict[str, Any]) -> None:
    """The consumer's upstream is published and the providers can notify it with the shared token."""
    sidecars = list(compose_sidecars(compose))
    provided = {settings.service for _, _, settings in sidecars if settings.listen is not None}
    tokens = {settings.token for _, _, settings in sidecars}
    assert len(tokens) == 1
    assert None not in tokens
    for name, service, settings in sidecars:
        if not settings.upstream:
            continue
        (upstream,) = settings.upstream
        assert upstream.service in provided
        assert any(port.endswith(f":{upstream.listen.port}") for port in service["ports"])
        assert settings.advertise_admin == f"http://{name}:{settings.admin.port}"


# --- systemd


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    return df.parse_unit((SYSTEMD / name).read_text())


def unit_settings(parsed: dict[str, dict[str, list[str]]], key: str) -> tuple[list[str], dict[str, str]]:
    """The sidecar argv (after the binary) of ExecStart= and the env of its EnvironmentFile=,
    read from the repository's copy (same basename stem as in deploy/systemd/)."""
    service = parsed["Service"]
    argv = df.unit_exec_argv(service[key][-1])
    assert argv[0].endswith("/graceful-sidecar"), argv
    env: dict[str, str] = {}
    for entry in service.get("EnvironmentFile", []):
        assert entry.lstrip("-") == "/etc/graceful-sidecar/orders.env", entry
        env.update(df.parse_env_file((SYSTEMD / "orders-sidecar.env").read_text()))
    return argv[1:], env


def test_exec_unit_budget_and_kill_mode() -> None:
    """app-with-sidecar.service: exec mode, KillMode=mixed, 143 ok, TimeoutStopSec over the budget."""
    parsed = unit("app-with-sidecar.service")
    service = parsed["Service"]
    argv, env = unit_settings(parsed, "ExecStart")
    settings = df.sidecar_settings(argv, env, "app-with-sidecar.service")
    assert argv[0] == "exec", "the app runs as the sidecar's child"
    assert settings.command
    assert service["Type"] == ["simple"]
    assert service["KillMode"] == ["mixed"]
    assert "143" in service["SuccessExitStatus"][-1].split()
    stop_source = "--stop-timeout" if "--stop-timeout" in argv else "SIDECAR_STOP_TIMEOUT or its default"
    df.check_stop_budget(
        df.StopBudget(
            "TimeoutStopSec= of app-with-sidecar.service",
            df.systemd_seconds(service["TimeoutStopSec"][-1]),
            (
                (df.drain_source(argv, env, "orders-sidecar.env"), settings.drain_timeout),
                (stop_source, settings.stop_timeout),
            ),
        )
    )


def test_sidecar_unit_drains_before_the_app_stops() -> None:
    """graceful-sidecar.service stops before the app, drains in ExecStop=, within TimeoutStopSec."""
    parsed = unit("graceful-sidecar.service")
    after = " ".join(parsed["Unit"]["After"]).split()
    assert "orders.service" in after
    assert parsed["Unit"]["PartOf"] == ["orders.service"]
    argv, env = unit_settings(parsed, "ExecStart")
    settings = df.sidecar_settings(argv, env, "graceful-sidecar.service")
    assert argv[0] == "run"
    assert settings.listen is not None
    stop, _ = unit_settings(parsed, "ExecStop")
    assert stop[0] == "shutdown"
    assert "--admin" in stop, "name the admin address: the env file may move it"
    admin = parse_host_port(stop[stop.index("--admin") + 1])
    assert admin.port == settings.admin.port
    assert admin.host in ("127.0.0.1", "localhost")
    service = parsed["Service"]
    df.check_stop_budget(
        df.StopBudget(
            "TimeoutStopSec= of graceful-sidecar.service",
            df.systemd_seconds(service["TimeoutStopSec"][-1]),
            ((df.drain_source(argv, env, "orders-sidecar.env"), settings.drain_timeout),),
        )
    )


def test_budget_check_rejects_a_short_timeout_stop_sec() -> None:
    """The unit budget fails, naming the terms, when TimeoutStopSec= is under drain + stop."""
    with pytest.raises(df.BudgetError, match=r"TimeoutStopSec= is 30 s.*25 s \(drain\) \+ 10 s \(stop\)"):
        df.check_stop_budget(df.StopBudget("TimeoutStopSec=", 30, (("drain", 25), ("stop", 10))))


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    """systemd-analyze verify accepts both units without a warning."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that the binaries and the env file exist: point them at local stand-ins.
    names = ["app-with-sidecar.service", "graceful-sidecar.service"]
    for name in names:
        text = (SYSTEMD / name).read_text()
        text = text.replace("/usr/local/bin/graceful-sidecar", venv_tool("graceful-sidecar"))
        text = text.replace("/opt/orders/bin/orders", "/bin/true")
        text = text.replace("/etc/graceful-sidecar/orders.env", str(SYSTEMD / "orders-sidecar.env"))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in names)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        cwd=tmp_path,
    )
    assert result.stdout.strip() + result.stderr.strip() == ""
    assert result.returncode == 0
