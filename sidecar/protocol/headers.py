"""The headers between sidecars (design, "Headers between sidecars"), as they go on the wire.

X-Sidecar-Consumer  consumer -> provider, every proxied request: the consumer's admin URL,
                    where the provider sends its offline notification
X-Sidecar-Closing   provider -> consumer, responses while draining: the instance id; the
                    consumer drops the instance at once
X-Sidecar-Refused   provider -> consumer, a 503 for a request the app never saw: the consumer
                    may send it elsewhere, whatever its method
X-Sidecar-Weight    provider -> consumer, every response of a provider in latency warmup mode:
                    the weight it computes now (an integer); the consumer follows it at once,
                    without waiting for the registry
"""

from __future__ import annotations

# Lower case: the HTTP core compares header names in lower case.
CONSUMER = b"x-sidecar-consumer"
CLOSING = b"x-sidecar-closing"
REFUSED = b"x-sidecar-refused"
WEIGHT = b"x-sidecar-weight"

# As written on responses and requests the sidecar makes.
CONSUMER_NAME = b"X-Sidecar-Consumer"
CLOSING_NAME = b"X-Sidecar-Closing"
REFUSED_NAME = b"X-Sidecar-Refused"
WEIGHT_NAME = b"X-Sidecar-Weight"
