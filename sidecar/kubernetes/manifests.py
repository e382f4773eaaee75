"""Kubernetes YAML in and out, for `graceful-sidecar inject`: documents parsed with PyYAML's safe
loader, and written back so that a document nobody changed is the very text it was (comments,
quoting and block scalars kept), while a changed one is dumped in block style.

Keeping the text needs each document's own slice of the stream. A line that starts with `---` or
`...` followed by a blank or the line's end is a document marker wherever it appears (YAML 1.2
forbids it as content, section 9.1.4), so splitting on such lines is exact; each slice is still
checked against the parse of the whole stream, and dumped instead when they differ.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import yaml

from sidecar.errors import InjectError

_MARKER = re.compile(r"^(?:---|\.\.\.)(?=[ \t]|$)", re.MULTILINE)


@dataclass(slots=True)
class Document:
    """One YAML document: its data, and its original text when that is known exactly."""

    data: Any
    text: str | None


def load_documents(source: str, text: str) -> list[Document]:
    """The non-empty documents of a YAML stream; InjectError naming `source` if it is not YAML."""
    try:
        parsed = [data for data in yaml.safe_load_all(text) if data is not None]
    except yaml.YAMLError as exc:
        raise InjectError(f"{source}: not valid YAML: {_describe(exc)}") from None
    slices = _document_texts(text)
    if slices is None or [data for data, _ in slices] != parsed:
        return [Document(unshared(data), None) for data in parsed]
    return [Document(unshared(data), chunk) for data, chunk in slices]


def unshared(data: Any) -> Any:
    """A copy without shared parts: PyYAML gives an alias (`*probe`) the very object of its anchor,
    and a change to one container must not reach another through it."""
    if isinstance(data, dict):
        return {key: unshared(value) for key, value in data.items()}
    if isinstance(data, list):
        return [unshared(value) for value in data]
    return data


def _document_texts(text: str) -> list[tuple[Any, str]] | None:
    """(data, text) of each non-empty document, comments before it included; None if a slice does
    not parse on its own (a directive, say), so that the caller dumps everything instead."""
    bounds = [0, *(m.start() for m in _MARKER.finditer(text)), len(text)]
    found: list[tuple[Any, str]] = []
    pending = ""  # comment-only slices: they belong to the next document
    for start, end in itertools.pairwise(bounds):
        chunk = text[start:end]
        chunk = _MARKER.sub("", chunk, count=1) if _MARKER.match(chunk) else chunk
        try:
            data = yaml.safe_load(chunk)
        except yaml.YAMLError:
            return None
        if data is None:
            pending += chunk
            continue
        found.append((data, (pending + chunk).strip("\n") + "\n"))
        pending = ""
    return found


def _describe(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else str(problem)


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key (as kubectl and most manifests write them),
    multi-line strings as `|` blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_document(data: Any) -> str:
    text: str = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 16
    )
    return text


def render(documents: list[tuple[Document, bool]]) -> str:
    """The stream: each document's original text unless it changed, `---` between documents."""
    texts = [
        doc.text if doc.text is not None and not changed else dump_document(doc.data)
        for doc, changed in documents
    ]
    return "---\n".join(texts)
