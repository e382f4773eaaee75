"""The forwarding error policy (sidecar.http.failures) as a function of its inputs: what a failed
forward means (sent or not, may go again, status, retries-metric reason), with the real errors
the HTTP core raises; properties checked with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ConnectFailed, UpstreamBroken, UpstreamError, UpstreamTimeout
from sidecar.http import IDEMPOTENT, Failure, classify, refused

METHODS = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH", "CONNECT"]


def errors() -> st.SearchStrategy[UpstreamError]:
    return st.one_of(
        st.just(ConnectFailed("cannot connect to 127.0.0.1:1: refused")),
        st.booleans().map(lambda reused: UpstreamBroken("127.0.0.1:1 closed the connection", reused)),
        st.just(UpstreamBroken("127.0.0.1:1 sent an invalid response: bad status")),
        st.just(UpstreamTimeout("127.0.0.1:1 sent nothing for 1 s")),
        st.just(UpstreamError("no complete answer")),
    )


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("replayable", [True, False])
def test_connect_failure_was_not_sent_and_may_go_anywhere(method: str, replayable: bool) -> None:
    """A connection that could not be made: nothing sent, any method (even with a streamed body)
    may go again, 503 if it does not, reason "connect"."""
    failure = classify(ConnectFailed("cannot connect to 10.0.0.1:80: refused"), method, replayable)
    assert failure == Failure("connect", sent=False, resendable=True, status=503)


def test_broken_idempotent_with_kept_body_may_go_again() -> None:
    """A connection broken after the request was sent: an idempotent request whose body was kept
    may go again; the answer otherwise is 502, reason "broken"."""
    failure = classify(UpstreamBroken("10.0.0.1:80 closed the connection"), "PUT", True)
    assert failure == Failure("broken", sent=True, resendable=True, status=502)


@pytest.mark.parametrize(("method", "replayable"), [("POST", True), ("GET", False), ("PATCH", False)])
def test_broken_non_idempotent_or_streamed_is_not_resent(method: str, replayable: bool) -> None:
    """Sent, maybe processed: a non-idempotent method, or a body that streamed and is gone, is
    answered 502 and not sent again."""
    failure = classify(UpstreamBroken("10.0.0.1:80 closed the connection"), method, replayable)
    assert failure == Failure("broken", sent=True, resendable=False, status=502)


def test_broken_pooled_connection_is_stale() -> None:
    """A pooled keep-alive connection the peer closed is marked stale (one more try on the same
    origin, when resendable); a fresh one is not."""
    assert classify(UpstreamBroken("closed", reused=True), "GET", True).stale
    assert not classify(UpstreamBroken("closed", reused=False), "GET", True).stale
    assert classify(UpstreamBroken("closed", reused=True), "POST", True).resendable is False


def test_timeout_answers_504_and_is_never_stale() -> None:
    """Silence past --app-timeout: sent, 504, reason "timeout"; not a stale connection."""
    failure = classify(UpstreamTimeout("10.0.0.1:80 sent nothing for 5 s"), "GET", True)
    assert failure == Failure("timeout", sent=True, resendable=True, status=504)
    assert classify(UpstreamTimeout("slow"), "POST", True).resendable is False


def test_failure_while_relaying_is_never_resent() -> None:
    """Once the response head arrived (relaying), nothing goes again: 502 for a cut-off body,
    504 for silence, whatever the method."""
    cut = classify(UpstreamBroken("closed", reused=True), "GET", True, responded=True)
    assert (cut.reason, cut.sent, cut.resendable, cut.status) == ("broken", True, False, 502)
    silent = classify(UpstreamTimeout("slow"), "GET", True, responded=True)
    assert (silent.resendable, silent.status) == (False, 504)
    upgrade = UpstreamBroken("101 Switching Protocols to a request that asked for no upgrade")
    assert classify(upgrade, "GET", True, responded=True).status == 502


@pytest.mark.parametrize("replayable", [True, False])
def test_refusal_goes_elsewhere_only_with_its_body(replayable: bool) -> None:
    """A provider's X-Sidecar-Refused: not processed, 503, reason "refused"; it may go elsewhere
    whatever the method, but only if its body was kept."""
    assert refused(replayable) == Failure("refused", sent=False, resendable=replayable, status=503)


@settings(max_examples=200, deadline=None)
@given(errors(), st.sampled_from(METHODS), st.booleans(), st.booleans())
def test_only_what_is_safe_may_go_again(
    error: UpstreamError, method: str, replayable: bool, responded: bool
) -> None:
    """Whatever the failure: a request goes again only if it was not sent, or it is idempotent,
    its body was kept and no response had begun; what was sent is answered 502 or 504."""
    failure = classify(error, method, replayable, responded=responded)
    if failure.resendable:
        assert not failure.sent or (method in IDEMPOTENT and replayable and not responded)
    if failure.sent:
        timed_out = isinstance(error, UpstreamTimeout)
        assert (failure.reason, failure.status) == (("timeout", 504) if timed_out else ("broken", 502))
    else:
        assert (failure.reason, failure.status, failure.resendable) == ("connect", 503, True)
    assert failure.stale == (isinstance(error, UpstreamBroken) and error.reused)
