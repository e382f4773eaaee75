"""h2spec, the HTTP/2 conformance suite, run against a server on host:port (h2c with prior
knowledge: no TLS), its results read from the JUnit report it writes.

h2spec is built by scripts/install-h2spec.sh (make tools) into .tools/h2spec/bin/. Each case
waits at most `case_timeout` seconds for the server (h2spec's -o); the whole run is bounded by
`timeout`, after which h2spec is killed (by pid, by subprocess.run).

A case is named as h2spec's command line names it: `http2/5.1.1/2` is the second case of section
5.1.1 of the HTTP/2 group (`generic/...`, `hpack/...` the other groups), so that a failed case
can be run again alone: `run_h2spec(host, port, "http2/5.1.1/2")`.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

H2SPEC_BINARY = Path(__file__).resolve().parents[2] / ".tools" / "h2spec" / "bin" / "h2spec"
CASE_TIMEOUT_SECONDS = 2
# 145 cases (146 with the strict ones); a server that answers none costs each its case timeout.
RUN_TIMEOUT_SECONDS = 400.0
# A case in the listing of `h2spec --dryrun`: "        2: Sends stream identifier ...".
DRYRUN_CASE = re.compile(r"^\s*(\d+): (.+)$")


@dataclass(frozen=True)
class H2specCase:
    """One case of h2spec's report."""

    id: str  # "http2/5.1.1/2", as h2spec's command line takes it
    section: str  # "5.1.1. Stream Identifiers"
    title: str  # "Sends stream identifier that is numerically smaller than previous"
    message: str = ""  # for a failed case, what was expected and what came


@dataclass
class H2specReport:
    passed: list[H2specCase] = field(default_factory=list)
    failed: list[H2specCase] = field(default_factory=list)
    skipped: list[H2specCase] = field(default_factory=list)
    output: str = ""  # h2spec's own output, whose end sums the run up

    @property
    def failed_ids(self) -> list[str]:
        return [case.id for case in self.failed]

    def summary(self) -> str:
        passed, failed, skipped = len(self.passed), len(self.failed), len(self.skipped)
        lines = [f"{passed + failed + skipped} cases, {passed} passed, {skipped} skipped, {failed} failed"]
        lines += [f"  {case.id} ({case.section}) {case.title}: {case.message}" for case in self.failed]
        return "\n".join(lines)


NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def dryrun_numbers(listing: str) -> list[tuple[int, str]]:
    """(number, title) of each case that `h2spec --dryrun` lists, in order."""
    return [(int(m[1]), m[2].strip()) for line in listing.splitlines() if (m := DRYRUN_CASE.match(line))]


def parse_junit(xml_text: str, numbers: list[tuple[int, str]] | None = None) -> H2specReport:
    """h2spec's JUnit report as passed, failed (a <failure> or an <error>) and skipped cases.

    The report does not number the cases: each one's number within its section is its place
    there, unless `numbers` (the dry run's listing of the same selection, in the same order)
    gives it, as it must when only some cases ran."""
    report = H2specReport()
    listed = iter(numbers or [])
    # h2spec writes a failure's message as it is: the bytes of a frame it got may be in it, and
    # control characters are not XML.
    for suite in ET.fromstring(NOT_XML.sub("?", xml_text)).iter("testsuite"):
        section = suite.get("name", "")
        for index, case in enumerate(suite.iter("testcase"), start=1):
            number = index
            if numbers is not None:
                number, title = next(listed, (0, ""))
                if title != case.get("classname", "").strip():
                    raise ValueError(
                        f"h2spec's dry run lists {title!r} where its report has {case.get('classname')!r}"
                    )
            case_id = f"{case.get('package', '')}/{number}"
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            if problem is not None:
                message = " | ".join(
                    line.strip() for line in (problem.text or "").splitlines() if line.strip()
                )
                report.failed.append(H2specCase(case_id, section, case.get("classname", ""), message))
            elif case.find("skipped") is not None:
                report.skipped.append(H2specCase(case_id, section, case.get("classname", "")))
            else:
                report.passed.append(H2specCase(case_id, section, case.get("classname", "")))
    return report


def run_h2spec(
    host: str,
    port: int,
    *cases: str,
    case_timeout: int = CASE_TIMEOUT_SECONDS,
    timeout: float = RUN_TIMEOUT_SECONDS,
    strict: bool = False,
    path: str = "/",
) -> H2specReport:
    """Runs h2spec (every case, or only `cases`: "http2/6.5", "hpack/4.2/1"...) against
    host:port. `strict` adds the cases that check what the RFC says SHOULD. Raises RuntimeError
    when h2spec did not run (not built, could not connect: no report)."""
    if not H2SPEC_BINARY.is_file():
        raise RuntimeError(f"{H2SPEC_BINARY} not found: `make tools` builds it (scripts/install-h2spec.sh)")
    selection = [str(H2SPEC_BINARY), *cases, *(["-S"] if strict else [])]
    listing = _run([*selection, "--dryrun"], timeout).stdout
    with tempfile.TemporaryDirectory(prefix="h2spec-") as workdir:
        junit = Path(workdir) / "report.xml"
        target = ["-h", host, "-p", str(port), "-P", path, "-o", str(case_timeout), "-j", str(junit)]
        done = _run([*selection, *target], timeout)
        output = done.stdout + done.stderr
        if not junit.is_file():
            raise RuntimeError(f"h2spec wrote no report (exit {done.returncode}):\n{output[-3000:]}")
        report = parse_junit(junit.read_text(), dryrun_numbers(listing))
    report.output = output
    return report


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=timeout
    )


def failed_cases(host: str, port: int, *cases: str, timeout: float = RUN_TIMEOUT_SECONDS) -> list[H2specCase]:
    """The cases of h2spec that fail against host:port (all of them, or only `cases`)."""
    return run_h2spec(host, port, *cases, timeout=timeout).failed
