"""Exec mode: the sidecar as PID 1 of a container, supervising the app as its child."""
