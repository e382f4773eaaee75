"""A request head as the core reads it: the checks that decide whether it may go on, and the
status that answers one that may not (RFC 9112; nginx's and Envoy's answers where the RFC leaves
a choice). The bytes are llhttp's to parse (through httptools); what it accepts and HTTP/1.1
does not is refused here, from the head's field lines as sidecar.http.fields read them.

    400  what llhttp will not parse without guessing (Content-Length with Transfer-Encoding,
         differing lengths, bad chunk sizes, bare LF, NUL, obs-fold, an invalid method or
         target); no Host, two, or an invalid one; a target above the root or `*` for anything
         but OPTIONS (sidecar.http.target); HTTP/0.9
    405  CONNECT: the sidecar is no tunnel
    431  a head over 64 KiB, trailers included
    501  transfer codings other than exactly `chunked` (as nginx and Envoy answer)
    505  a major version other than 1 (a later HTTP/1.x is read as 1.1)

An upgrade asked for with a body, or to h2c, is ignored (RFC 9110 section 7.8 allows it): the
request goes on as a plain one, and the connection stays HTTP/1.1.
"""

from __future__ import annotations

import httptools

from sidecar.http.fields import BadMessage, FieldReader
from sidecar.http.head import RequestHead
from sidecar.http.target import origin_form, valid_host


def read_request_head(parser: httptools.HttpRequestParser, fields: FieldReader, url: bytes) -> RequestHead:
    """The head `parser` has just read (its field lines in `fields`, its target `url`), checked;
    BadMessage for one the core will not forward."""
    version = parser.get_http_version()
    if version[0] != "1":
        raise BadMessage(505 if version[0] > "1" else 400, f"HTTP/{version} is not spoken here")
    if version != "1.0":
        version = "1.1"  # a later HTTP/1.x is read as 1.1 (RFC 9110 section 2.5)
    method = parser.get_method().decode()
    if method == "CONNECT":
        raise BadMessage(405, "CONNECT: the sidecar is no tunnel")
    if fields.codings and fields.codings != (b"chunked",):
        raise BadMessage(501, "transfer codings other than chunked are not supported")
    host = _host(fields.hosts, version)
    target, authority = origin_form(method, url)
    chunked = bool(fields.codings)
    length = int(fields.length) if fields.length is not None and not chunked else None
    upgrade = parser.should_upgrade()
    if upgrade and (chunked or length or _h2c(fields.lines)):
        # Ignored: with a body (what `curl --http2 -d ...` sends), it could not be answered
        # by a switch before the body; and h2c, which RFC 9113 deprecates, would open a
        # tunnel to the app past everything the sidecar does per request.
        upgrade = False
    dropped = fields.connection
    if version == "1.0":
        dropped |= {b"expect"}  # ignored in an HTTP/1.0 request (RFC 9110 section 10.1.1)
    return RequestHead(
        method=method,
        target=target,
        version=version,
        headers=fields.lines,
        host=authority if authority is not None else host,
        # An HTTP/1.0 message with Transfer-Encoding: its framing is suspect, the connection
        # closes after it (RFC 9112 section 6.1).
        keep_alive=parser.should_keep_alive() and not (version == "1.0" and chunked),
        upgrade=upgrade,
        chunked=chunked,
        content_length=length,
        dropped=dropped,
    )


def _host(hosts: tuple[bytes, ...], version: str) -> bytes | None:
    """The request's one valid Host (RFC 9112 section 3.2: a MUST), None for HTTP/1.0 without."""
    if len(hosts) > 1 or (not hosts and version == "1.1"):
        raise BadMessage(400, "an HTTP/1.1 request needs exactly one Host header")
    if hosts and not valid_host(hosts[0]):
        raise BadMessage(400, "the Host header is not a valid host[:port]")
    return hosts[0] if hosts else None


def request_parser(protocol: object) -> httptools.HttpRequestParser:
    """llhttp, reading any HTTP/x.y version (it refuses 1.2 by itself): `_request_head` decides."""
    parser = httptools.HttpRequestParser(protocol)
    parser.set_dangerous_leniencies(lenient_version=True)
    return parser


def _h2c(lines: list[tuple[bytes, bytes]]) -> bool:
    """Whether an upgrade request asks for h2c (a pass over the head for upgrade requests only)."""
    return any(name.lower() == b"upgrade" and b"h2c" in value.lower() for name, value in lines)


def framing_only(head: RequestHead) -> bytes:
    """A head with nothing but `head`'s framing, for a fresh parser to read its body by."""
    framing = (
        b"Transfer-Encoding: chunked" if head.chunked else b"Content-Length: %d" % (head.content_length or 0)
    )
    return b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n"


# llhttp's reasons (httptools does not expose its error codes) for what it refuses on its own
# that is answered with another status than 400.
_LLHTTP_STATUS = {
    "Request has invalid `Transfer-Encoding`": 501,  # a last coding other than chunked
    "Invalid `Transfer-Encoding` header value": 501,  # "chunked, chunked", "chunked, gzip"
    "Pause on PRI/Upgrade": 505,  # the HTTP/2 connection preface
}


def refusal(exc: httptools.HttpParserError) -> tuple[int, str]:
    """The status and message that answer what the parser refused."""
    cause = exc.__context__
    if isinstance(cause, BadMessage):
        return cause.status, f"the request has {cause}" if cause.status == 431 else str(cause)
    reason = str(exc)
    status = _LLHTTP_STATUS.get(reason, 400)
    if status == 501:
        return status, "transfer codings other than chunked are not supported"
    return status, f"malformed request: {reason}"
