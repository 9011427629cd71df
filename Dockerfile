# Dockerfile: an EXAMPLE image of Switchboard (docs/deploy.md). Not built by the test suite.
#
#   docker build -t switchboard .
#   docker run --rm -p 8000:8000 -e JWT_SECRET="$(openssl rand -base64 48)" switchboard
#
# One node on the memory backend with the shipped websocket.yaml (every option at its
# default). For several nodes on Redis mount another config over it, as compose.yaml does
# with config/cluster.yaml:  -v ./config/cluster.yaml:/etc/switchboard/websocket.yaml:ro

# --- build: a wheel of the project (the demo page's files included) ---------------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY server/ server/
COPY plugins/ plugins/
COPY static/ static/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- run ------------------------------------------------------------------------------------
FROM python:3.11-slim
# WS_SERVER_HOST: a container listens on every interface (websocket.yaml says 127.0.0.1).
# WS_SERVER_ENVIRONMENT: production refuses the public development secret and dev login, so
# the container will not start without JWT_SECRET. Both are overridable at `docker run -e`.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WS_SERVER_HOST=0.0.0.0 \
    WS_SERVER_ENVIRONMENT=production
COPY --from=build /wheels/ /tmp/wheels/
# the project with the redis extra (redis-py), so one image serves both backends
RUN pip install --no-cache-dir "$(ls /tmp/wheels/switchboard-*.whl)[redis]" \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchboard
COPY websocket.yaml /etc/switchboard/websocket.yaml

USER switchboard
EXPOSE 8000
# liveness (python: the slim image has no curl); readiness is /readyz, for orchestrators
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# SIGTERM (docker stop) drains: connections get 1001 and the process exits within
# server.shutdown_timeout; give docker stop a longer --time (compose: stop_grace_period)
CMD ["switchboard", "serve", "-c", "/etc/switchboard/websocket.yaml"]
