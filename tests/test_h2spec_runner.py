"""The h2spec runner (tests/support/h2spec.py), checked against nghttpd: nghttp2's own server
passes every case of h2spec 2.2.1 but one, http2/5.1.1/2 (a HEADERS frame on a stream id lower
than one already used: nghttpd answers the request instead of closing the connection with
PROTOCOL_ERROR). The sidecar's listeners are run through the same function.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.h2spec import parse_junit, run_h2spec
from tests.support.nghttpd import Nghttpd
from tests.support.ports import free_port

NGHTTPD_FAILS = ["http2/5.1.1/2"]


@pytest.fixture(scope="module")
def nghttpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nghttpd]:
    """nghttpd (h2c) with its defaults."""
    with Nghttpd(tmp_path_factory.mktemp("nghttpd")) as server:
        yield server


def test_every_case_against_nghttpd(nghttpd: Nghttpd) -> None:
    """All 145 cases run; nghttpd fails only the one it is known to fail, named as h2spec names it."""
    report = run_h2spec("127.0.0.1", nghttpd.port, timeout=120)
    assert report.failed_ids == NGHTTPD_FAILS, report.summary()
    assert (len(report.passed), len(report.skipped)) == (144, 0), report.summary()
    (failed,) = report.failed
    assert failed.section == "5.1.1. Stream Identifiers"
    assert "PROTOCOL_ERROR" in failed.message
    assert "145 tests, 144 passed, 0 skipped, 1 failed" in report.output


def test_some_cases_keep_their_numbers(nghttpd: Nghttpd) -> None:
    """A run of chosen cases names each by its number in its section, not its place in the run."""
    report = run_h2spec("127.0.0.1", nghttpd.port, "http2/5.1.1/2", "http2/6.5/3", "hpack/6.1")
    assert report.failed_ids == NGHTTPD_FAILS
    assert [case.id for case in report.passed] == ["http2/6.5/3", "hpack/6.1/1"]


def test_nothing_listening_is_an_error() -> None:
    """Against a port nobody listens on, h2spec writes no report: an error that says why, not a pass."""
    with pytest.raises(RuntimeError, match="connection refused"):
        run_h2spec("127.0.0.1", free_port(), "generic/1", timeout=60)


def test_parse_junit_failures_errors_and_skips() -> None:
    """<failure> and <error> are failed cases, <skipped> skipped ones; each numbered in its section."""
    xml = """<testsuites>
      <testsuite name="6.5. SETTINGS" package="http2/6.5">
        <testcase package="http2/6.5" classname="first"></testcase>
        <testcase package="http2/6.5" classname="second"><failure>expected GOAWAY
          got DATA</failure></testcase>
        <testcase package="http2/6.5" classname="third"><skipped>no</skipped></testcase>
        <testcase package="http2/6.5" classname="fourth"><error>timeout</error></testcase>
      </testsuite>
    </testsuites>"""
    report = parse_junit(xml)
    assert [case.id for case in report.passed] == ["http2/6.5/1"]
    assert report.failed_ids == ["http2/6.5/2", "http2/6.5/4"]
    assert report.failed[0].message == "expected GOAWAY | got DATA"
    assert [case.id for case in report.skipped] == ["http2/6.5/3"]
