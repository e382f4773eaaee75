"""The rolling-restart demonstration and the tooling it shares with tests and benchmarks: the
demo app, a fleet of local processes, the load generator and the HTML report. Uses the rest;
nothing of the sidecar imports it but the `demo` command."""
