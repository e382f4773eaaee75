"""How a registry failure is told: `consul at 127.0.0.1:8501: connection refused (register)`.

Where the registry is, a few words of why, and the operation last (for whoever debugs). Not a
library's repr (`ClientConnectorError(ConnectionKey(host='127.0.0.1', ...))`): these messages
reach /status, the log and a start-up failure line, which users read. The why is found in the
exception's chain, the cause a library wrapped being the one that says most (an errno, a
timeout, a failed name lookup); only then the library's own text, if it reads as words. No
secret is ever shown: URLs lose their tokens and passwords.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

# Longer texts are cut: a reason is a few words, and a server's answer may be a whole page.
MAX_REASON_CHARS = 200
# Query parameters and the like whose values are secrets (a Consul ACL token in the URL).
_SECRET = re.compile(r"(?i)\b((?:[a-z_]*token|password|passwd|secret)=)[^&\s'\"]+")
_USERINFO_PASSWORD = re.compile(r"(//[^/@\s:]*:)[^/@\s]+@")
# What a repr looks like: a name and its call parentheses (`ConnectionKey(`), not words.
_REPR = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\(")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+")
_TIMEOUT_NAMES = ("Timeout", "TimeoutError", "TimeoutException")


def told(where: str, why: str, what: str) -> str:
    """The one form of a registry error's message: WHERE: WHY (WHAT)."""
    return f"{where}: {why} ({what})"


def reason(exc: BaseException, timeout_s: float | None = None) -> str:
    """A few readable words for why `exc` happened: "connection refused", "host not found",
    "no answer within 5 s" (`timeout_s`, when the caller knows the bound), the exception's own
    text when it reads as words, else its class name as words."""
    chain = list(_chain(exc))
    for link in chain:
        if isinstance(link, socket.gaierror):
            return "host not found"
        if isinstance(link, OSError) and isinstance(link.errno, int) and link.errno > 0:
            return os.strerror(link.errno).lower()
    if any(_is_timeout(link) for link in chain):
        return f"no answer within {timeout_s:g} s" if timeout_s else "no answer in time"
    for link in chain:
        if text := _readable(str(link)):
            return text
    return _words(type(exc).__name__)


def without_secrets(text: str) -> str:
    """`text` with the values of tokens and passwords replaced by `***`."""
    return _USERINFO_PASSWORD.sub(r"\1***@", _SECRET.sub(r"\1***", text))


def shown_url(url: str | SplitResult) -> str:
    """A registry URL as messages may show it: its query's secret values and any password
    replaced by `***`."""
    parts = urlsplit(url) if isinstance(url, str) else url
    query = [(name, "***" if _SECRET.match(f"{name}=x") else value) for name, value in parse_qsl(parts.query)]
    shown = parts._replace(query=urlencode(query, safe="*/")).geturl()
    return without_secrets(shown)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps: its cause or context, aiohttp's `os_error`, the members of a
    group (anyio's "all connection attempts failed"); each once, outermost first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        link = todo.pop(0)
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        os_error = getattr(link, "os_error", None)
        wrapped: list[BaseException | None] = [os_error] if isinstance(os_error, BaseException) else []
        if isinstance(link, BaseExceptionGroup):
            wrapped.extend(link.exceptions)
        wrapped.append(link.__cause__ or link.__context__)
        todo.extend(w for w in wrapped if w is not None)


def _is_timeout(exc: BaseException) -> bool:
    # By name as well: kazoo's, py-consul's and httpx's timeouts are no TimeoutError.
    return isinstance(exc, TimeoutError) or any(
        cls.__name__.endswith(_TIMEOUT_NAMES) for cls in type(exc).__mro__
    )


def _readable(text: str) -> str | None:
    text = " ".join(text.split())
    if not text or _REPR.search(text):
        return None
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return without_secrets(text)


def _words(name: str) -> str:
    """`ServerDisconnectedError` as "server disconnected"."""
    words = [word.lower() for word in _WORD.findall(name)]
    if len(words) > 1 and words[-1] in ("error", "exception"):
        words.pop()
    return " ".join(words) or "error"
