"""Print the name of every signal received, one per line, flushed (after dumb-init's helper).

    print_signals.py [--ignore-term] [--spawn-grandchild] [--prefix TEXT]

Prints "ready" once it can take signals. SIGTERM is printed, then kills the process with the
default action (status "killed by SIGTERM", a shell's 143) unless --ignore-term. With
--spawn-grandchild it first starts a copy of itself, in the same process group, whose lines
start with "grandchild: ".

The signals are blocked and taken with sigwaitinfo rather than handlers: nothing prints from
inside a handler, so no signal can interrupt a print, and no polling loop is needed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

SIGNALS = {
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGTERM,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--spawn-grandchild", action="store_true")
    parser.add_argument("--prefix", default="")
    args = parser.parse_args()

    def say(line: str) -> None:
        # One write(2): the grandchild shares the pipe, and a short write to a pipe is atomic.
        os.write(sys.stdout.fileno(), f"{args.prefix}{line}\n".encode())

    # Blocked before the grandchild starts, so it inherits the mask and no signal can hit either
    # process with its default action before it is ready.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    if args.spawn_grandchild:
        grandchild_args = ["--prefix", "grandchild: "] + (["--ignore-term"] if args.ignore_term else [])
        # Never waited for: when this process dies the grandchild is an orphan, which is the point.
        subprocess.Popen([sys.executable, __file__, *grandchild_args])
    say("ready")
    while True:
        sig = signal.sigwaitinfo(SIGNALS).si_signo
        say(signal.Signals(sig).name)
        if sig == signal.SIGTERM and not args.ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)  # pending while blocked
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # delivered: we die here


if __name__ == "__main__":
    main()
