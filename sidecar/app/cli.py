"""Commands and option parsing; the only place that calls sys.exit.

    graceful-sidecar run      [options]
    graceful-sidecar exec     [options] -- CMD ...
    graceful-sidecar shutdown [--admin HOST:PORT] [--token T]
    graceful-sidecar demo     [--registry URL]
    graceful-sidecar inject   [FILE ...]  (Kubernetes YAML, stdin when none or -, to stdout)

Exit statuses: 0 success; 1 the sidecar could not start or a shutdown did not drain;
2 bad options or configuration; 128+N forced exit by a second signal N. In exec mode: the
child's status (128+N if signal N killed it), 127 if CMD was not found, 126 if not executable.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from registry_adapters import RegistryError
from registry_adapters.reasons import shown_url
from sidecar.config import (
    OPTIONS,
    Option,
    Settings,
    load_settings,
    parse_health_path,
    parse_host_port,
    parse_name,
    parse_registry,
    parse_seconds,
)
from sidecar.errors import ConfigError, InjectError, SidecarError

EXIT_CONFIG = 2


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll is noise


def add_sidecar_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file with the options below as keys [env SIDECAR_CONFIG]"
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.attr,
            metavar=option.metavar or None,
            action="append" if option.repeatable else "store",
            default=None,  # None: not given here (the environment, the file or the default decide)
            help=f"{option.help}{default_text(option)} [env {option.env}]",
        )


def default_text(option: Option) -> str:
    """ " (default X)" for --help, where the option has a default to show."""
    value = option.default
    if value is None or (option.repeatable and not value):
        return ""  # required, or derived: the help text says from what
    if isinstance(value, float):
        shown = f"{value:g}"
    elif isinstance(value, tuple):
        shown = ",".join(str(item) for item in value)
    else:
        shown = str(value) or "''"
    return f" (default {shown})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graceful-sidecar", description="Lossless releases for any service."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_sidecar_options(commands.add_parser("run", help="run the sidecar"))
    add_sidecar_options(
        commands.add_parser(
            "exec",
            help="run the sidecar with CMD as its supervised child",
            usage="graceful-sidecar exec [options] -- CMD [ARGS...]",
        )
    )
    shutdown = commands.add_parser("shutdown", help="call /shutdown and wait until drained")
    # The same SIDECAR_ADMIN and SIDECAR_TOKEN as the sidecar itself, so one env file serves both.
    shutdown.add_argument(
        "--admin",
        default=os.environ.get("SIDECAR_ADMIN", "127.0.0.1:16688"),
        metavar="HOST:PORT|URL",
        help="the sidecar's admin API, as HOST:PORT or http://HOST:PORT (default 127.0.0.1:16688)"
        " [env SIDECAR_ADMIN]",
    )
    shutdown.add_argument(
        "--token",
        default=os.environ.get("SIDECAR_TOKEN"),
        metavar="T",
        help="bearer token, when the sidecar has --token and this caller is not --allow'ed"
        " [env SIDECAR_TOKEN]",
    )
    demo = commands.add_parser("demo", help="the rolling-restart demonstration")
    demo.add_argument("--registry", default=None, metavar="URL", help="default: a fresh embedded SQLite file")
    add_inject_options(
        commands.add_parser(
            "inject",
            help="add the sidecar to Kubernetes manifests (files or stdin -> stdout)",
            description="Adds graceful-sidecar to every Deployment, StatefulSet, DaemonSet, ReplicaSet"
            " and Pod, and points the Services of the same input that reach the app at the sidecar.",
        )
    )
    return parser


def checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a config parser: its ValueError message becomes argparse's error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def parse_port(text: str) -> int:
    return parse_host_port(f"host:{text}").port


def parse_object_name(text: str) -> str:
    """A Kubernetes object name (a DNS-1123 subdomain), such as a Secret's."""
    if len(text) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", text):
        raise ValueError(f"expected a Kubernetes name (lowercase letters, digits, '-' and '.'), got {text!r}")
    return text


def add_inject_options(parser: argparse.ArgumentParser) -> None:
    from sidecar.kubernetes.inject import DEFAULT_DRAIN_SECONDS, DEFAULT_STOP_SECONDS, placeholder_image

    parser.add_argument("files", nargs="*", metavar="FILE", help="YAML files; none or - reads stdin")
    parser.add_argument(
        "--image",
        default=None,
        help=f"the sidecar's image, as you pushed it (without it: the placeholder {placeholder_image()})",
    )
    parser.add_argument(
        "--registry",
        type=checked(parse_registry),
        metavar="URL",
        help="the sidecar's --registry, the one the fleet shares (required)",
    )
    parser.add_argument(
        "--listen-port",
        type=checked(parse_port),
        default=8443,
        metavar="PORT",
        help="the sidecar's inbound port",
    )
    parser.add_argument(
        "--app-port",
        type=checked(parse_port),
        metavar="PORT",
        help="default: the first container's first port",
    )
    parser.add_argument(
        "--app-health",
        type=checked(parse_health_path),
        metavar="PATH",
        help="the sidecar's --app-health: PATH, grpc[:SERVICE] or '' (default: from the app's former"
        " readiness probe, its httpGet path or grpc[:SERVICE] for a grpc probe)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=checked(parse_seconds),
        metavar="SEC",
        help=f"the sidecar's --drain-timeout (default {DEFAULT_DRAIN_SECONDS:g})",
    )
    parser.add_argument(
        "--stop-timeout",
        type=checked(parse_seconds),
        metavar="SEC",
        help=f"the app's stop time after SIGTERM, for the grace period (default {DEFAULT_STOP_SECONDS:g})",
    )
    parser.add_argument(
        "--token-secret",
        type=checked(parse_object_name),
        metavar="NAME",
        help="a Secret whose key `token` is the fleet token",
    )
    parser.add_argument(
        "--service",
        type=checked(parse_name),
        metavar="NAME",
        help="service name (default: the workload's name)",
    )


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_cli(list(sys.argv[1:] if argv is None else argv)))


def run_cli(argv: list[str]) -> int:
    command: list[str] = []
    if argv[:1] == ["exec"] and "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(unknown_arguments(parser, args.command, unknown), file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "shutdown":
        return shutdown_command(args.admin, args.token)
    if args.command == "demo":
        from sidecar.demo.run import run_demo

        return run_demo(args.registry)
    if args.command == "inject":
        return inject_command(args)
    if args.command == "exec" and not command:
        print("graceful-sidecar exec: missing '-- CMD [ARGS...]'", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings(vars(args), command=command)
    except ConfigError as exc:
        print(f"graceful-sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_format)
    return run_sidecar(settings)


def unknown_arguments(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> str:
    """One line for what argparse did not know: the nearest flag to a mistyped one, or where
    `exec`'s command goes."""
    prefix = f"graceful-sidecar {command}"
    word = unknown[0]
    if command == "exec" and not word.startswith("-"):
        return f"{prefix}: put '--' before the command: graceful-sidecar exec [options] -- {word} ..."
    if word.startswith("--"):
        flag = word.partition("=")[0]
        known = [flag for action in _subparser(parser, command)._actions for flag in action.option_strings]
        near = difflib.get_close_matches(flag, known, n=1)
        hint = f"; did you mean {near[0]}?" if near else f" (see graceful-sidecar {command} --help)"
        return f"{prefix}: unknown option {flag}{hint}"
    return f"{prefix}: unexpected argument {word!r} (see graceful-sidecar {command} --help)"


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    return parser


def run_sidecar(settings: Settings) -> int:
    from sidecar.app.runtime import run
    from sidecar.exec.supervisor import ChildSpawnError

    try:
        return run(settings)
    except ChildSpawnError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except RegistryError as exc:
        print(f"graceful-sidecar: --registry {shown_url(settings.registry)}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SidecarError as exc:
        print(f"graceful-sidecar: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a SIGINT before the handlers were installed
        return 130


def shutdown_command(admin: str, token: str | None) -> int:
    """Call /shutdown on a local sidecar and wait; 0 once drained, 1 otherwise."""
    try:
        address = parse_host_port(_admin_address(admin))
    except ValueError as exc:
        print(f"graceful-sidecar shutdown: --admin: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        # No read timeout: /shutdown answers when the drain ends, bounded by --drain-timeout.
        timeout = httpx.Timeout(None, connect=5.0)
        response = httpx.post(f"http://{address}/shutdown", headers=headers, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        print(f"graceful-sidecar shutdown: cannot reach the sidecar at {address}: {exc}", file=sys.stderr)
        return 1
    print(response.text)
    return 0 if response.status_code == 200 else 1


def _admin_address(admin: str) -> str:
    """HOST:PORT from HOST:PORT or an admin base URL (as --advertise-admin gives it)."""
    if "://" not in admin:
        return admin
    parts = urlsplit(admin.strip())
    if parts.scheme != "http" or not parts.netloc or parts.path.strip("/"):
        raise ValueError(f"expected HOST:PORT or http://HOST:PORT, got {admin!r}")
    return parts.netloc


def inject_command(args: argparse.Namespace) -> int:
    """Read every input first and write stdout once: an error leaves nothing half-written."""
    from sidecar.kubernetes.inject import InjectOptions, inject_sources

    options = InjectOptions(
        image=args.image,
        registry=args.registry,
        listen_port=args.listen_port,
        app_port=args.app_port,
        app_health=args.app_health,
        drain_timeout=args.drain_timeout,
        stop_timeout=args.stop_timeout,
        token_secret=args.token_secret,
        service=args.service,
    )
    warnings: list[str] = []
    try:
        sources = [read_source(name) for name in args.files or ["-"]]
        output = inject_sources(sources, options, warnings.append)
    except InjectError as exc:
        print(f"graceful-sidecar inject: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in warnings:
        print(f"graceful-sidecar inject: warning: {warning}", file=sys.stderr)
    sys.stdout.write(output)
    return 0


def read_source(name: str) -> tuple[str, str]:
    try:
        if name == "-":
            return "<stdin>", sys.stdin.read()
        with open(name, encoding="utf-8") as file:
            return name, file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InjectError(f"{name}: cannot read it ({reason})") from None
