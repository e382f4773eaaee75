# syntax=docker/dockerfile:1
# graceful-sidecar: a small image with the sidecar as PID 1.
#
#   docker build -t graceful-sidecar .
#   docker run --rm --stop-timeout 40 -e SIDECAR_SERVICE=orders -p 16688:16688 \
#       -e SIDECAR_ADVERTISE_ADMIN=http://HOST-IP:16688 graceful-sidecar
#
# SIDECAR_ADVERTISE_ADMIN is required with the image's wildcard admin address: it is where other
# sidecars send their notifications, which no default can guess from inside a container.
#
# Two stages: the first builds wheels (the project's and every dependency's) with pip, on the
# full python image, whose C compiler lets setup.py compile the data path (mypyc: about half
# the CPU per request); the second installs them from that directory alone (--no-index: no
# registry, no compiler, no wheel left in a layer), so the final image has Python and the
# package, nothing else. Both are pinned to Debian bookworm, so the compiled wheel finds the
# same C library on the slim one.
# The same image runs the demo app: `--entrypoint python ... -m sidecar.demo.app --port 8080`.
#
# Stop time: `docker stop` waits 10 s before SIGKILL by default, less than the default
# --drain-timeout (25 s). Give the container more: `docker run --stop-timeout 40`,
# compose `stop_grace_period: 40s`, Kubernetes `terminationGracePeriodSeconds`.

FROM python:3.11-bookworm AS build
WORKDIR /src
# Only what the wheel needs (.dockerignore keeps the rest of the tree out of the context).
COPY pyproject.toml setup.py README.md ./
COPY sidecar ./sidecar
COPY registry_adapters ./registry_adapters
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can check it without a passwd lookup.
ARG APP_UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    XDG_STATE_HOME=/var/lib/graceful-sidecar \
    SIDECAR_ADMIN=0.0.0.0:16688
# XDG_STATE_HOME holds the default embedded registry (SQLite); mount a volume there to keep it.
# SIDECAR_ADMIN binds the admin API on every interface, or EXPOSE would be pointless: the
# mutating endpoints still accept only loopback callers or the --token (SIDECAR_TOKEN) bearer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels --root-user-action=ignore \
        /wheels/graceful_sidecar-*.whl \
    && groupadd --system --gid "${APP_UID}" sidecar \
    && useradd --system --uid "${APP_UID}" --gid "${APP_UID}" --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sidecar \
    && install -d -o "${APP_UID}" -g "${APP_UID}" -m 0750 /var/lib/graceful-sidecar
USER ${APP_UID}
WORKDIR /var/lib/graceful-sidecar
EXPOSE 16688
# /live, on the port SIDECAR_ADMIN names (the image's default when unset). Slim has no curl:
# urllib raises on a refused connection or a non-2xx answer, and the exception exits 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; p = os.environ.get('SIDECAR_ADMIN', '127.0.0.1:16688').rpartition(':')[2]; u.urlopen(f'http://127.0.0.1:{p}/live', timeout=2)"]
# Exec form: the sidecar itself is PID 1 and gets SIGTERM directly (no shell in between); it
# has no child in `run` mode, and reaps like tini in `exec` mode.
ENTRYPOINT ["graceful-sidecar"]
CMD ["run"]
