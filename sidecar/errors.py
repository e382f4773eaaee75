"""The sidecar's error tree, in one place.

    SidecarError
    +-- ConfigError          an option has a value we cannot use; the message names the option
    +-- StartupError         a component could not start (a port in use)
    +-- ChildSpawnError      exec mode: CMD could not be started (127 not found, 126 not executable;
                             defined in sidecar.supervisor, which raises it)

Registry backends raise `registry_adapters.RegistryError` and its subclasses; the lifecycle
catches those at its boundary, records them in /status and metrics, and retries.
Only `sidecar.cli` turns an error into an exit status.
"""


class SidecarError(Exception):
    """Base of the errors the sidecar raises on purpose."""


class ConfigError(SidecarError, ValueError):
    """An option (flag, SIDECAR_* variable or TOML key) has an unusable value."""


class StartupError(SidecarError):
    """A component could not start: the sidecar cannot run."""
