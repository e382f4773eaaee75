"""The sidecar's error tree, in one place.

    SidecarError
    +-- ConfigError          an option has a value we cannot use; the message names the option
    +-- StartupError         a component could not start (a port in use)
    +-- InjectError          `inject`: input that is not YAML, or a workload it cannot handle
    +-- ChildSpawnError      exec mode: CMD could not be started (127 not found, 126 not executable;
                             defined in sidecar.exec.supervisor, which raises it)
    +-- UpstreamError        the data path got no (complete) answer from the app or an instance
        +-- ConnectFailed    not even connected: nothing was sent, so any request may go elsewhere
        +-- UpstreamBroken   the connection broke or the answer was not HTTP; `reused` tells
                             whether it was a pooled keep-alive connection (one the peer may
                             have just closed)
        +-- UpstreamTimeout  --app-timeout passed without a byte from the app
        +-- StreamRefused    HTTP/2: the origin refused the stream (REFUSED_STREAM, or above its
                             GOAWAY's last stream id): it was not processed
    +-- ConnectionFault      HTTP/2: a peer broke the protocol (RFC 9113 section 5.4.1); the
                             connection ends with GOAWAY and the fault's code (defined in
                             sidecar.http.h2c.frames, which raises it, with its error codes)

Registry backends raise `registry_adapters.RegistryError` and its subclasses; the lifecycle
catches those at its boundary, records them in /status and metrics, and retries.
Only `sidecar.app.cli` turns an error into an exit status.
"""


class SidecarError(Exception):
    """Base of the errors the sidecar raises on purpose."""


class ConfigError(SidecarError, ValueError):
    """An option (flag, SIDECAR_* variable or TOML key) has an unusable value."""


class StartupError(SidecarError):
    """A component could not start: the sidecar cannot run."""


class InjectError(SidecarError):
    """`graceful-sidecar inject` cannot handle its input; the message names the file and object."""


class UpstreamError(SidecarError):
    """The HTTP core got no (complete) answer from the app or a provider instance."""


class ConnectFailed(UpstreamError):
    """No connection could be made: nothing of the request was sent."""


class UpstreamBroken(UpstreamError):
    """The connection broke, or what came back was not HTTP."""

    def __init__(self, message: str, reused: bool = False) -> None:
        super().__init__(message)
        self.reused = reused  # a pooled keep-alive connection: the peer may have just closed it


class StreamRefused(UpstreamError):
    """HTTP/2: the origin says it did not process the stream; it may go anywhere again."""


class UpstreamTimeout(UpstreamError):
    """--app-timeout passed while a response was owed and nothing came."""
