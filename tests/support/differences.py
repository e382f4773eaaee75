"""The differences the differential test intends, and the comparison that allows only them
(tests.support.differential runs the cases and says what each side saw, in parts and aspects).

An `Intended` entry names a part (compared by its summary alone: a response one side forwards and
the other refuses) or one aspect, and says what each side shows there and why; `compare` fails on
any other difference, showing both sides. The builders here write the entries of differences
that recur, in the terms of the summaries: nginx forwards what the sidecar refuses, or the other
way round; the sidecar answers 502 where nginx relays; nginx holds a connection the sidecar
carries on.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.differential import BROKEN, Seen, hang, resp_path


@dataclass(frozen=True)
class Intended:
    """A difference on purpose: what each side shows (None: nothing), and why."""

    nginx: str | None
    sidecar: str | None
    reason: str


FROM_APP = "200 from the app"
NGINX_400 = "400 its own error page"
SIDECAR_502 = "502 its own error page"


def sidecar_refuses(nginx_app: str, status: str, reason: str) -> dict[str, Intended]:
    """nginx forwards the request (the app gets `nginx_app`) and goes on; the sidecar answers
    `status` itself and closes the connection."""
    return {
        "app": Intended(nginx_app, "nothing", reason),
        "client #1": Intended(FROM_APP, f"{status} its own error page", reason),
        "next request": Intended(FROM_APP, "closed", reason),
    }


def sidecar_forwards(sidecar_app: str, reason: str, sidecar_next: str = "closed") -> dict[str, Intended]:
    """nginx answers 400 itself and closes; the sidecar forwards the request (the app gets
    `sidecar_app`)."""
    return {
        "app": Intended("nothing", sidecar_app, reason),
        "client #1": Intended(NGINX_400, FROM_APP, reason),
        "next request": Intended("closed", sidecar_next, reason),
    }


def sidecar_502(reason: str) -> dict[str, Intended]:
    """nginx relays the app's response and reuses its connection; the sidecar answers 502 and
    closes that app connection (the next request comes on a new one)."""
    return {
        "client": Intended(FROM_APP, SIDECAR_502, reason),
        "app: next request on the same app connection": Intended("yes", "no", reason),
    }


def nginx_holds(
    case: str, nginx_client: str | None, reason: str, app_connection: str = "the same"
) -> dict[str, Intended]:
    """After the app's response, nginx holds the client connection: the next request never gets
    an answer (nor reaches the app); through the sidecar it does, on `app_connection`.
    `nginx_client`: what the client got first from nginx, when that differs too (the sidecar
    answering 502 then)."""
    path = resp_path(case)
    differences = {
        "app": Intended(
            path, f"{path}, /normal (the next request on {app_connection} app connection)", reason
        ),
        "next request": Intended(hang() if nginx_client is None else BROKEN, FROM_APP, reason),
    }
    if nginx_client is not None:
        differences["client"] = Intended(nginx_client, SIDECAR_502, reason)
    return differences


# -- comparing ------------------------------------------------------------------------------------

# Equal aspects shown per part in a failure, for context; the differing ones are all shown.
EQUAL_SHOWN = 12


def compare(case: str, intended: dict[str, Intended], nginx: Seen, sidecar: Seen) -> None:
    """Fails unless the two agree on every aspect but the intended ones, which must be as listed.
    A part named in `intended` is compared by its summary alone; otherwise aspect by aspect (the
    summary, made of them, only where a side has nothing else: "closed", "nothing")."""
    lines, wrong = [], 0
    for part in sorted(nginx.keys() | sidecar.keys() | {key.split(": ")[0] for key in intended}):
        left, right = nginx.get(part, {}), sidecar.get(part, {})
        if part in intended:
            aspects = [""]
        else:
            aspects = sorted(
                left.keys()
                | right.keys()
                | {k.split(": ", 1)[1] for k in intended if k.startswith(f"{part}: ")}
            )
            if len(left) > 1 and len(right) > 1:
                aspects.remove("")
                lines.append(
                    f"      {part}: {left['']}"
                    if left[""] == right[""]
                    else f"      {part}: {left['']} / {right['']}"
                )
        equal = 0
        for aspect in aspects:
            key = f"{part}: {aspect}" if aspect else part
            pair = (left.get(aspect), right.get(aspect))
            if key in intended:
                want = intended[key]
                ok = pair == (want.nginx, want.sidecar)
                note = "(intended)" if ok else f"INTENDED nginx={want.nginx!r} sidecar={want.sidecar!r}"
                note += f"\n          why:     {want.reason}"
            else:
                ok, note = pair[0] == pair[1], ""
            wrong += not ok
            if ok and not note:
                equal += 1
                if equal <= EQUAL_SHOWN:
                    lines.append(f"        {key}: {pair[0]}")
                continue
            flag = "  " if ok else "!!"
            lines.append(
                f"{flag}      {key}: {note}\n          nginx:   {pair[0]}\n          sidecar: {pair[1]}"
            )
        if equal > EQUAL_SHOWN:
            lines.append(f"        ({part}: {equal - EQUAL_SHOWN} more equal)")
    assert not wrong, f"{case}: {wrong} difference(s) not intended\n" + "\n".join(lines)
