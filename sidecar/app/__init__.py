"""The shell on top: the command line (`cli`), the composition of the parts into one running
sidecar (`runtime`), and the admin API (`admin`, `openapi`). Imports every part but the demo,
which only the `demo` command reaches."""
