"""The offline notice (design, "Offline notification"): the body a draining provider sidecar
POSTs to /notify on every consumer sidecar that called it recently, written and read here only.

    {"service": "orders", "instance_id": "orders-1", "address": "10.0.0.5:8080", "event": "offline"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EVENT = "offline"
# What a notice must hold; a short sentence because /notify answers 400 with it.
EXPECTED = "expected a JSON object with service, instance_id and event"


@dataclass(frozen=True, slots=True)
class OfflineNotice:
    service: str
    instance_id: str
    address: str  # host:port as published in the registry; may be empty in a notice received

    def body(self) -> dict[str, str]:
        return {
            "service": self.service,
            "instance_id": self.instance_id,
            "address": self.address,
            "event": EVENT,
        }

    @classmethod
    def from_body(cls, payload: Any) -> OfflineNotice:
        """The notice in a decoded JSON body; ValueError says what is wrong with it."""
        if not isinstance(payload, dict):
            raise ValueError(EXPECTED)
        for key in ("service", "instance_id", "event"):
            if not isinstance(payload.get(key), str) or not payload[key]:
                raise ValueError(f"{key} must be a non-empty string")
        address = payload.get("address", "")
        if not isinstance(address, str):
            raise ValueError("address must be a string host:port when given")
        if payload["event"] != EVENT:
            raise ValueError(f"unknown event {payload['event']!r}: only {EVENT!r} is known")
        return cls(payload["service"], payload["instance_id"], address)
