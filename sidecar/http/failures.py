"""One forwarding error policy: what a failed try at an origin means, for both proxies.

The inbound proxy (provider side, forwarding to the app) and an upstream listener (consumer side,
forwarding to a provider instance) meet the same failures and must read them the same way:

    failure                          sent  may go again                  answer  reason
    ConnectFailed                    no    yes, any method               503     connect
    503 with X-Sidecar-Refused       no    if the body was kept          503     refused
    StreamRefused (HTTP/2)           no    if the body was kept          503     refused
    UpstreamBroken / UpstreamError   yes   idempotent and body kept      502     broken
    UpstreamTimeout                  yes   idempotent and body kept      504     timeout
    any of them once a response      yes   no                            502/504 broken/timeout
    head had arrived

"Sent" means the origin's app may have seen the request, so only a request it is harmless to
process twice may go again. A refusal is the provider sidecar's own answer for a request its app
never saw (drained, or the app unreachable), which is why the provider answers a ConnectFailed
with one. Each side then acts on the `Failure` alone: the provider refuses, retries a stale
pooled connection once, or answers; the consumer ejects (an instance it could not connect to,
or one that went silent), tries another instance, or answers. The reason is the consumer's
retries metric label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sidecar.errors import ConnectFailed, StreamRefused, UpstreamBroken, UpstreamError, UpstreamTimeout
from sidecar.http.head import IDEMPOTENT

Reason = Literal["connect", "refused", "broken", "timeout"]


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed try at an origin means for the request."""

    reason: Reason
    sent: bool  # the origin's app may have seen (part of) the request
    resendable: bool  # the same request may go out again, to this origin or another
    status: int  # the answer when it does not go out again
    # It broke on a pooled keep-alive connection the origin may have closed just before the
    # request went out: worth one more try on a fresh connection to the same origin.
    stale: bool = False


def classify(error: UpstreamError, method: str, replayable: bool, *, responded: bool = False) -> Failure:
    """The failure `error` means for a `method` request whose body can (`replayable`) or cannot
    be sent again; `responded`: it came after the response head arrived (while relaying)."""
    if isinstance(error, ConnectFailed) and not responded:
        # Not even connected: nothing was sent, a streamed body is still unread.
        return Failure("connect", sent=False, resendable=True, status=503)
    if isinstance(error, StreamRefused) and not responded:
        return refused(replayable)
    resendable = method in IDEMPOTENT and replayable and not responded
    if isinstance(error, UpstreamTimeout):
        return Failure("timeout", sent=True, resendable=resendable, status=504)
    stale = isinstance(error, UpstreamBroken) and error.reused
    return Failure("broken", sent=True, resendable=resendable, status=502, stale=stale)


def refused(replayable: bool) -> Failure:
    """A provider sidecar's 503 with X-Sidecar-Refused, or an HTTP/2 origin's REFUSED_STREAM: the
    app never saw the request, which may go elsewhere whatever its method, if its body was kept
    (a streamed one was used up)."""
    return Failure("refused", sent=False, resendable=replayable, status=503)
