"""The OpenAPI 3.1 document of the admin API, served at GET /openapi.json.

Written by hand next to the routes (sidecar/app/admin.py), not generated: the bodies are built from
dicts there, so there is nothing to derive a schema from. tests/test_openapi.py keeps the two
honest: every route the admin API serves is in `paths` and nothing else is, and schemathesis checks
every response of a live sidecar against these schemas.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sidecar.app.admin import MAX_BODY_BYTES
from sidecar.metrics import PHASES
from sidecar.protocol.metadata import MAX_WEIGHT


def _object(
    required: dict[str, Any], optional: dict[str, Any] | None = None, closed: bool = True
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


COUNT = {"type": "integer", "minimum": 0}
SECONDS = {"type": "number", "minimum": 0}
WEIGHT = {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT}
TEXT_OR_NULL = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string", "description": "what was wrong"}}),
    "Phase": {
        "type": "string",
        "enum": list(PHASES),
        "description": "starting: the app is not healthy, not yet or no longer (a lost app's"
        " instance is out of the registry until the online sequence brings it back)",
    },
    "DrainResult": _object(
        {
            "drained": {
                "type": "boolean",
                "description": "false: --drain-timeout passed with requests in flight",
            },
            "inflight": COUNT,
            "inflight_streams": {
                "type": "integer",
                "minimum": 0,
                "description": "of inflight, the HTTP/2 streams (gRPC calls among them)",
            },
            "seconds": SECONDS,
            "notified": COUNT,
            "deregistered": {"type": "boolean", "description": "an instance was taken out of the registry"},
            "registered": {
                "type": "boolean",
                "description": "there was one to take out: false for a consumer-only sidecar, or one"
                " whose registry never took its registration",
            },
        }
    ),
    "Ready": _object({"ready": {"type": "boolean"}, "phase": _ref("Phase")}),
    "Live": _object({"live": {"const": True}, "phase": _ref("Phase")}),
    "Weight": _object(
        {
            "base": {"type": "integer", "minimum": 1, "maximum": MAX_WEIGHT},
            "current": WEIGHT,
            "override": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_WEIGHT},
            "warmup": _ref("Warmup"),
        },
        # PUT and DELETE add whether the registry took the new weight at once (else it is retried).
        {"published": {"type": "boolean"}},
    ),
    "Warmup": _object(
        {
            "mode": {"enum": ["time", "latency"], "description": "--warmup-mode"},
            "window_s": {**SECONDS, "description": "--warmup: the window (time), the upper bound (latency)"},
            "curve": {"type": "number"},
            "min_percent": {"type": "number", "minimum": 0, "maximum": 100},
            "min_requests": COUNT,
            "elapsed_s": SECONDS,
            "active": {"type": "boolean"},
            "served": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "latency mode: requests measured since the registration",
            },
            "latency_p90_ms": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "latency mode: the app's p90, the last window while warming",
            },
            "reference_p90_ms": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "latency mode: the p90 the service's warm peers publish",
            },
            "peers": COUNT,
            "published_p90_ms": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "latency mode, serving: the p90 this instance publishes for warming peers",
            },
            "ended": {
                "enum": ["settled", "window", None],
                "description": "why the last warmup ended: settled (warm) or window (--warmup ran out)",
            },
        }
    ),
    "WeightChange": _object({"weight": WEIGHT}),
    "Notification": _object(
        {
            "service": {"type": "string", "minLength": 1},
            "instance_id": {"type": "string", "minLength": 1},
            "event": {"const": "offline"},
        },
        {"address": {"type": "string", "description": "host:port of the instance"}},
        closed=False,
    ),
    "UpstreamInstance": _object(
        {
            "instance_id": {"type": "string"},
            "address": {"type": "string"},
            "weight": {"type": "number", "minimum": 0},
            "inflight": COUNT,
            "dropped": {"type": "boolean"},
            "ejected": {"type": "boolean"},
            "held": {
                "type": "boolean",
                "description": "kept although the registry dropped it (most of the table went at once)",
            },
        }
    ),
    "Status": _object(
        {
            "service": {"type": "string"},
            "instance_id": {"type": "string"},
            "role": {"enum": ["provider", "consumer-only"], "description": "consumer-only: no --listen"},
            "phase": _ref("Phase"),
            "ready": {"type": "boolean"},
            "weight": {
                "description": "null for a consumer-only sidecar",
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {
                            "base": WEIGHT,
                            "current": WEIGHT,
                            "override": {"type": ["integer", "null"]},
                            "warmup": _ref("Warmup"),
                        }
                    ),
                ],
            },
            "app": {
                "description": "the app's health as the last check saw it; null without --app",
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {
                            "health": {**TEXT_OR_NULL, "description": "the health URL (null: not checked)"},
                            "healthy": {"type": "boolean"},
                            "last_check": {
                                **TEXT_OR_NULL,
                                "description": "what the last check got, and what to do about a failure",
                            },
                        }
                    ),
                ],
            },
            "inflight": COUNT,
            "registry": _object(
                {"kind": {"type": "string"}, "registered": {"type": "boolean"}, "last_error": TEXT_OR_NULL}
            ),
            "consumers": COUNT,
            "upstreams": {
                "type": "object",
                "description": "consumer side: one entry per --upstream, by service name",
                "additionalProperties": _object(
                    {
                        "listen": {"type": "string"},
                        "instances": {"type": "array", "items": _ref("UpstreamInstance")},
                        "last_error": TEXT_OR_NULL,
                    }
                ),
            },
            "child": {
                "description": "exec mode: the supervised command; null in run mode",
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {
                            "pid": {"type": "integer"},
                            "state": {"enum": ["running", "exited"]},
                            "returncode": {"type": ["integer", "null"]},
                        }
                    ),
                ],
            },
        }
    ),
}

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
FORBIDDEN = _error("the caller's address is not in --allow and no valid bearer token was sent")
TOO_LARGE = _error(f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
CLOSING = _error("the instance is going offline: its weight can no longer change")
DRAIN = "the offline sequence ran and ended; the same body for every caller, concurrent or later"


def _shutdown(method: str) -> dict[str, Any]:
    return {
        "operationId": f"shutdown_{method}",
        "summary": "Run the offline sequence and wait until it ends",
        "description": "Deregister, notify consumers, drain; blocks until the drain ends (at most"
        " --drain-timeout). GET is for a Kubernetes preStop httpGet hook, which always sends GET.",
        "security": BEARER,
        "responses": {
            "200": _json(_ref("DrainResult"), f"drained: {DRAIN}"),
            "403": FORBIDDEN,
            "504": _json(_ref("DrainResult"), f"not drained: --drain-timeout passed first; {DRAIN}"),
        },
    }


def _get(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"operationId": operation_id, "summary": summary, "security": [], "responses": responses}}


PATHS: dict[str, Any] = {
    "/shutdown": {"get": _shutdown("get"), "post": _shutdown("post")},
    "/ready": _get(
        "ready",
        "Readiness: registered, app healthy and not draining",
        {
            "200": _json(_ref("Ready"), "ready"),
            "503": _json(_ref("Ready"), "not ready (starting or draining)"),
        },
    ),
    "/live": _get("live", "Liveness: the sidecar works", {"200": _json(_ref("Live"), "live")}),
    "/status": _get("status", "Everything about this sidecar", {"200": _json(_ref("Status"), "status")}),
    "/weight": {
        **_get(
            "get_weight",
            "The weight: base, current, override, warmup",
            {"200": _json(_ref("Weight"), "weight")},
        ),
        "put": {
            "operationId": "put_weight",
            "summary": "Override the weight, published to the registry and to consumers",
            "security": BEARER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("WeightChange")}},
            },
            "responses": {
                "200": _json(_ref("Weight"), "the override is set"),
                "400": _error(f'the body is not {{"weight": N}} with N in 0..{MAX_WEIGHT}'),
                "403": FORBIDDEN,
                "409": CLOSING,
                "413": TOO_LARGE,
            },
        },
        "delete": {
            "operationId": "delete_weight",
            "summary": "Clear the override",
            "security": BEARER,
            "responses": {
                "200": _json(_ref("Weight"), "the override is cleared"),
                "403": FORBIDDEN,
                "409": CLOSING,
            },
        },
    },
    "/notify": {
        "post": {
            "operationId": "notify",
            "summary": "Consumer side: an instance of a provider went offline; drop it at once",
            "security": BEARER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Notification")}},
            },
            "responses": {
                "204": {"description": "the instance left this sidecar's tables (if it was there)"},
                "400": _error("the body is not a notification"),
                "403": FORBIDDEN,
                "413": TOO_LARGE,
            },
        }
    },
    "/metrics": _get(
        "metrics",
        "Prometheus metrics",
        {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    ),
    "/openapi.json": _get(
        "openapi",
        "This document",
        {"200": _json({"type": "object"}, "the OpenAPI 3.1 document of the admin API")},
    ),
}


def package_version() -> str:
    try:
        return version("graceful-sidecar")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def document() -> dict[str, Any]:
    """The OpenAPI document of this sidecar's admin API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "graceful-sidecar admin API",
            "version": package_version(),
            "description": "Mutating operations (bearer security) also accept, without a token, callers whose"
            ' address is in --allow (loopback by default). Errors are JSON {"error": "..."}.',
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the fleet token, --token"}
            },
        },
    }
