"""The request target and Host: what the core forwards in their place (RFC 9112 section 3.2).

The app gets every request in origin-form with exactly one valid Host. An absolute-form target
(`GET http://host:81/a HTTP/1.1`, what a client sends a proxy) becomes origin-form, its authority
the Host (section 3.2.2: it replaces any Host field). `*` is only for OPTIONS (section 3.2.4);
authority-form is CONNECT's, refused before it gets here.

Dot segments: a path that climbs above the root (`/../x`, `/a/../../x`, `%2e%2e` spelled out too)
is refused, as nginx refuses it. Otherwise the target goes on unchanged, unless `--app` has a path
prefix, which it is joined to after its dot segments are removed (RFC 3986 section 5.2.4): a
target cannot reach above the prefix it was given.
"""

from __future__ import annotations

import re

from sidecar.http.fields import BadMessage

# RFC 3986 host [":" port]: an IP-literal in brackets or a reg-name (unreserved, sub-delims,
# pct-encoded). What Host may not carry: spaces, userinfo ("a@b"), a path, a query; nor may it
# be empty, which RFC 9112 allows only for a target URI without an authority, never an http one
# (nginx answers it 400 too).
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?")
_ABSOLUTE = re.compile(rb"(?i)https?://([^/?#]*)([^#]*)")
# Segment spellings of "." and "..", percent-encoded dots included (RFC 3986 section 2.3: %2E
# is "." and normalisers decode it).
_DOT = frozenset({b".", b"%2e"})
_DOT_DOT = frozenset({b"..", b".%2e", b"%2e.", b"%2e%2e"})


def valid_host(value: bytes) -> bool:
    return _HOST.fullmatch(value) is not None


def origin_form(method: str, target: bytes) -> tuple[bytes, bytes | None]:
    """The target to forward (origin-form, or `*` for OPTIONS) and the authority an absolute-form
    target names (None for an origin-form one). Raises BadMessage(400) for what may not go on."""
    authority = None
    if not target.startswith(b"/"):
        if target == b"*":
            if method != "OPTIONS":
                raise BadMessage(400, f"the target * is only for OPTIONS, not {method}")
            return target, None
        absolute = _ABSOLUTE.fullmatch(target)
        if absolute is None:
            raise BadMessage(400, "the request target is neither a path nor an absolute URL")
        authority, target = absolute.group(1), absolute.group(2) or b"/"
        if not authority or not valid_host(authority):
            raise BadMessage(400, "the request target's authority is not a valid host[:port]")
        if not target.startswith(b"/"):  # "http://host?query"
            target = b"/" + target
    path = target.partition(b"?")[0]
    if (b"/." in path or b"%2" in path) and remove_dot_segments(path) is None:
        raise BadMessage(400, "the request target climbs above the root")
    return target, authority


def join(prefix: bytes, target: bytes) -> bytes:
    """`target` (origin-form, checked by origin_form) under the path `prefix`, dot segments gone."""
    if target == b"*":
        return target
    path, question, query = target.partition(b"?")
    normal = remove_dot_segments(path) if b"/." in path or b"%2" in path else path
    return prefix + (normal or path) + question + query


def remove_dot_segments(path: bytes) -> bytes | None:
    """RFC 3986 section 5.2.4 on an absolute path; None when a ".." would climb above the root."""
    segments = path.split(b"/")[1:]
    kept: list[bytes] = []
    for index, segment in enumerate(segments):
        lowered = segment.lower()
        if lowered in _DOT_DOT:
            if not kept:
                return None
            kept.pop()
        elif lowered not in _DOT:
            kept.append(segment)
            continue
        if index == len(segments) - 1:
            kept.append(b"")  # "/a/." and "/a/b/.." keep their trailing slash
    return b"/" + b"/".join(kept)
