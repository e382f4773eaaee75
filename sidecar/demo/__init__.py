"""The rolling-restart demonstration and the tooling it shares with tests and benchmarks, each
written once: the demo app (`app`), free ports (`ports`), starting, stopping and awaiting
processes (`processes`), a fleet of providers and consumers (`fleet`), the roll (`roll`), the load
generator (`loadgen`), `percentile` (`stats`) and the HTML report (`report`). Uses the rest;
nothing of the sidecar imports it but the `demo` command."""
