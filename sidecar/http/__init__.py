"""The data path's protocol cores: HTTP/1.1 on asyncio Protocols and llhttp (httptools), and
HTTP/2 with prior knowledge (h2c) frame by frame (sidecar.http.h2c), on the same
ports: a connection that opens with HTTP/2's preface is handed over to it.

`HttpServer` parses client request heads and hands each to a handler as an `Exchange`; the
handler decides (forward, refuse, retry elsewhere) and the core moves the bytes: heads rewritten
and sent in one write, bodies relayed as they arrive with flow control both ways, keep-alive
pools to the origins (`Pool`), 1xx responses passed on, upgraded connections spliced. The one
piece of policy here is what a failed forward means (`classify`, sidecar.http.failures), so
that the provider and the consumer side read failures the same way.

The core owns what must not be left to a client or an app, as nginx and Envoy do: the framing of
every message (a response ends where its framing says; what an origin sends beyond it reaches no
client), a request's target and Host (sidecar.http.target), which headers are hop-by-hop and
which marks an app may not set (sidecar.http.fields), and a bound on every wait and size
(sidecar.http.deadline, the limits in server and fields).
"""

from sidecar.http.client import Origin, UpstreamResponse
from sidecar.http.exchange import Exchange
from sidecar.http.failures import Failure, classify, refused
from sidecar.http.h2c.exchange import H2Response, StreamExchange
from sidecar.http.head import IDEMPOTENT, Headers, RequestHead, ResponseHead
from sidecar.http.listener import HttpServer, Limits
from sidecar.http.pool import Pool

# What a policy handles: a request on HTTP/1.1, or a stream on HTTP/2; one interface.
AnyExchange = Exchange | StreamExchange

__all__ = [
    "IDEMPOTENT",
    "AnyExchange",
    "Exchange",
    "Failure",
    "H2Response",
    "Headers",
    "HttpServer",
    "Limits",
    "Origin",
    "Pool",
    "RequestHead",
    "ResponseHead",
    "StreamExchange",
    "UpstreamResponse",
    "classify",
    "refused",
]
