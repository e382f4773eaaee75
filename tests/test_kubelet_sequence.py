"""deploy/kubernetes/deployment.yaml, played: the kubelet's pod termination against real processes.

Two "pods" are started from the manifest's own values: the native sidecar with the manifest's
args and the environment its env/envFrom give it (ConfigMap, Secret, POD_IP), and the demo app
where the sidecar's --app points. Ports are remapped to free loopback ports (16688 -> a free
one, and so on) and POD_IP is 127.0.0.1; the registry is a local SQLite file instead of the
ConfigMap's Consul, and loopback callers need the token as the kubelet (calling from the node)
does. Everything else, the drain and quiet timeouts included, is the manifest's.

Then, under load through a consumer sidecar, one pod is deleted the way the kubelet (>= 1.29,
native sidecars) does it, with the preStop hook, probe and grace period read from the manifest:
  1. the app container's preStop httpGet (port, path, headers), bounded by the grace period;
  2. SIGTERM to the app container; wait for it, with what is left of the grace period
     (at least 2 s, as the kubelet gives);
  3. once the app has exited, SIGTERM to the native sidecar;
  4. SIGKILL to whatever still runs when terminationGracePeriodSeconds is over.

The same test runs on what `graceful-sidecar inject` makes of deploy/kubernetes/inject/orders.yaml
(a plain Deployment), so that an injected pod is as lossless as the hand-written one. Its sidecar
has --allow with loopback (the kubelet's node address, here), so its preStop carries no token.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from sidecar.demo.loadgen import LoadGenerator
from tests.support import deploy_files as df
from tests.support.ports import free_port
from tests.support.procs import SidecarProc, sidecar, wait_for

DEPLOYMENT = df.KUBERNETES / "deployment.yaml"
INJECT_INPUT = df.KUBERNETES / "inject" / "orders.yaml"
LOCAL_POD_IP = "127.0.0.1"
MANIFEST_ADMIN_PORT = 16688
NOBODY = "192.0.2.1/32"


@dataclass
class LocalPod:
    """One pod of the manifest, as local processes on remapped ports."""

    name: str
    plan: df.PodPlan
    ports: dict[int, int]  # the manifest's port -> the local one
    app: subprocess.Popen[bytes]
    sidecar: subprocess.Popen[bytes]
    stats_file: Path
    logs: list[Path]

    def url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def sidecar_log(self) -> str:
        return self.logs[1].read_text(errors="replace")


@dataclass
class Termination:
    """What the played kubelet saw."""

    pre_stop_status: int = 0
    pre_stop_body: dict[str, Any] = field(default_factory=dict)
    pre_stop_seconds: float = 0.0
    ready_after_pre_stop: int = 0
    app_exit: int | None = None
    sidecar_exit: int | None = None
    killed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def localize(argv: list[str], ports: dict[int, int]) -> list[str]:
    """The manifest's argv for loopback: 0.0.0.0 binds become 127.0.0.1 and every host:port
    moves to its local port; a port the test does not map fails here, not in the sidecar."""

    def move(match: re.Match[str]) -> str:
        port = int(match.group(2))
        assert port in ports, f"deployment.yaml uses port {port}, which this test does not map"
        return f"{match.group(1) or ''}127.0.0.1:{ports[port]}"

    return [re.sub(r"^(https?://)?(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)$", move, arg) for arg in argv]


@contextmanager
def start_pod(tmp_path: Path, name: str, registry: str, manifest: Path) -> Iterator[LocalPod]:
    plan = df.load_pod_plan(manifest, pod_ip=LOCAL_POD_IP)
    settings = plan.settings
    assert settings.listen is not None
    assert settings.app is not None
    app_port = urlsplit(settings.app).port
    assert app_port is not None
    ports = {port: free_port() for port in (settings.admin.port, settings.listen.port, app_port)}
    stats_file = tmp_path / f"{name}-stats.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIDECAR_")}
    env |= plan.env | {"SIDECAR_REGISTRY": registry}
    if "--allow" not in plan.argv and "SIDECAR_ALLOW" not in plan.env:
        # The kubelet calls from the node, not from the pod's loopback, which the default allows
        # without a token. Here every call comes from loopback: allow none of it (192.0.2.1 is a
        # documentation address), so that only the manifest's header can open /shutdown.
        env["SIDECAR_ALLOW"] = NOBODY
    logs = [tmp_path / f"{name}-app.log", tmp_path / f"{name}-sidecar.log"]
    with ExitStack() as stack:
        app_log, car_log = (stack.enter_context(open(path, "wb")) for path in logs)
        # Native sidecars start first; the app container starts once the startupProbe passes.
        car = subprocess.Popen(
            [sys.executable, "-m", "sidecar", *localize(plan.argv, ports)],
            env=env,
            stdout=car_log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(kill_process, car)
        startup = df.resolve_http_get(
            plan.sidecar_container["startupProbe"]["httpGet"], plan.sidecar_container, "startupProbe"
        )
        wait_for(
            lambda: probe(car, logs[1], f"http://127.0.0.1:{ports[startup.port]}{startup.path}"),
            what=f"{name}: the sidecar's startupProbe",
        )
        argv = [sys.executable, "-m", "sidecar.demo.app", "--port", str(ports[app_port]), "--name", name]
        app = subprocess.Popen(
            [*argv, "--stats-file", str(stats_file)], stdout=app_log, stderr=subprocess.STDOUT
        )
        stack.callback(kill_process, app)
        pod = LocalPod(name, plan, ports, app, car, stats_file, logs)
        ready = plan.readiness
        wait_for(
            lambda: probe(car, logs[1], pod.url(ready.port, ready.path)),
            what=f"{name}: the app container's readinessProbe",
        )
        yield pod


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """Teardown once the assertions are made: a drain of the surviving pod would only add its
    quiet period to the test's time."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def probe(proc: subprocess.Popen[bytes], log: Path, url: str) -> bool:
    """A kubelet probe (success = 2xx); a process that died fails the wait at once, with its log."""
    if proc.poll() is not None:
        raise AssertionError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
    return httpx.get(url, timeout=1, trust_env=False, verify=False).is_success


def wait_exit(proc: subprocess.Popen[bytes], deadline: float) -> int | None:
    """The process's exit status, or None if it still runs at the deadline."""
    try:
        return proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def play_pod_deletion(pod: LocalPod) -> Termination:
    """The kubelet's termination of a pod with one app container and one native sidecar."""
    plan, seen = pod.plan, Termination()
    started = time.monotonic()
    deadline = started + plan.grace
    # 1. preStop of the app container: GET, headers as written; the kubelet ignores the status.
    hook = plan.pre_stop
    try:
        answer = httpx.get(
            pod.url(hook.port, hook.path),
            headers=hook.headers,
            timeout=plan.grace,
            trust_env=False,
            verify=False,
        )
        seen.pre_stop_status = answer.status_code
        seen.pre_stop_body = json.loads(answer.text or "{}")
    except (httpx.HTTPError, ValueError):
        pass
    seen.pre_stop_seconds = time.monotonic() - started
    ready = plan.readiness
    seen.ready_after_pre_stop = httpx.get(
        pod.url(ready.port, ready.path), timeout=5, verify=False
    ).status_code
    # 2. SIGTERM to the app; it keeps at least the kubelet's minimum grace after the hook.
    deadline = max(deadline, time.monotonic() + df.KUBELET_MIN_GRACE_SECONDS)
    pod.app.send_signal(signal.SIGTERM)
    seen.app_exit = wait_exit(pod.app, deadline)
    # 3. Native sidecars get SIGTERM once every app container has exited.
    if seen.app_exit is not None:
        pod.sidecar.send_signal(signal.SIGTERM)
        seen.sidecar_exit = wait_exit(pod.sidecar, deadline)
    # 4. The grace period is over: SIGKILL.
    for container, proc in (("app", pod.app), ("sidecar", pod.sidecar)):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            seen.killed.append(container)
    seen.seconds = time.monotonic() - started
    return seen


def injected_manifest(tmp_path: Path, registry: str) -> Path:
    """deploy/kubernetes/inject/orders.yaml through the real `graceful-sidecar inject`, with the
    Secret of deploy/kubernetes and the test's `registry`."""
    argv = [sys.executable, "-m", "sidecar", "inject", "--token-secret", "graceful-sidecar-token"]
    argv += ["--registry", registry, "--image", "registry.test/graceful-sidecar:test"]
    done = subprocess.run([*argv, str(INJECT_INPUT)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "injected.yaml"
    path.write_text(done.stdout)
    return path


@pytest.mark.parametrize("manifest", ["deployment.yaml", "injected"])
def test_kubelet_termination_of_the_manifest_loses_nothing(tmp_path: Path, manifest: str) -> None:
    """Deleting a pod of deployment.yaml (or of an injected manifest) the kubelet's way, under
    load, fails no request."""
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    path = DEPLOYMENT if manifest == "deployment.yaml" else injected_manifest(tmp_path, registry)
    plan = df.load_pod_plan(path, pod_ip=LOCAL_POD_IP)
    df.check_stop_budget(plan.budget())  # a manifest that cannot drain in time fails right here
    assert plan.pre_stop.port == plan.readiness.port == MANIFEST_ADMIN_PORT
    service = plan.settings.service
    with ExitStack() as stack:
        pods = [stack.enter_context(start_pod(tmp_path, f"{service}-{n}", registry, path)) for n in (1, 2)]
        upstream_port = free_port()
        consumer: SidecarProc = stack.enter_context(
            sidecar(
                tmp_path,
                registry,
                None,
                "--upstream",
                f"{service}=127.0.0.1:{upstream_port}",
                service="checkout",
            )
        )
        wait_for(
            lambda: len(consumer.status()["upstreams"][service]["instances"]) == 2,
            what="the consumer to know both pods",
        )
        with LoadGenerator(f"http://127.0.0.1:{upstream_port}", concurrency=16, work_ms=(20, 200)) as load:
            wait_for(lambda: len({s.instance for s in load.samples if s.ok}) == 2, what="load on both pods")
            seen = play_pod_deletion(pods[0])
            after = len(load.samples)
            wait_for(lambda: len(load.samples) > after + 100, what="load after the deletion")
        # The hook drained (200, drained), readiness failed, nothing needed SIGKILL, the app was
        # idle at SIGTERM, and the surviving pod took every request after the deletion.
        victim = pods[0]
        assert seen.pre_stop_status == 200, (
            f"preStop answered {seen.pre_stop_status} {seen.pre_stop_body}: the kubelet would ignore it"
            " and SIGTERM an app that is still in use (a 403 means the header's token is not the Secret's)"
        )
        assert seen.pre_stop_body["drained"] is True
        assert seen.pre_stop_body["deregistered"] is True
        assert seen.pre_stop_seconds < plan.settings.drain_timeout
        assert seen.ready_after_pre_stop == 503, "the readiness probe must fail once the drain began"
        assert seen.killed == [], f"SIGKILL at the end of the {plan.grace:g} s grace period: {seen}"
        assert seen.sidecar_exit == 0, victim.sidecar_log()[-2000:]
        assert json.loads(victim.stats_file.read_text())["inflight_at_sigterm"] == 0
        failures = load.failures()
        assert failures == [], f"{len(failures)} failed requests, first: {failures[:3]}"
        late = [s for s in load.samples[after:] if s.ok]
        assert late
        assert all(s.instance == pods[1].name for s in late)
