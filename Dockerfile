# layer-router container: the wheel (with the demo model repository and the default policy
# bundle inside it) installed into a virtualenv, run as a non-root user.
#
#   docker build -t layer-router .
#   docker run -p 8000:8000 -p 8002:8002 layer-router
#   docker run -v "$PWD/site.yaml:/etc/layer-router/config.yaml:ro" -p 8000:8000 layer-router
#
# Configuration: the mounted file at $LAYER_ROUTER_CONFIG (default: deploy/docker/layer-router.yaml,
# copied below), command-line flags after `serve`, OTEL_* variables for tracing. State (audit
# trail, spool) goes to $LAYER_ROUTER_STATE_DIR: mount a volume there to keep it.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/layer-router
COPY pyproject.toml README.md ./
COPY router/ router/
COPY edge_models/ edge_models/
COPY policies/ policies/
# hatchling builds the wheel and force-includes edge_models/ and policies/ into it.
RUN /opt/layer-router/bin/pip install /src

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 router \
    && useradd --system --uid 10001 --gid router --home-dir /var/lib/layer-router \
        --create-home --shell /usr/sbin/nologin router
COPY --from=build /opt/layer-router /opt/layer-router
COPY deploy/docker/layer-router.yaml /etc/layer-router/config.yaml
ENV PATH=/opt/layer-router/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LAYER_ROUTER_CONFIG=/etc/layer-router/config.yaml \
    LAYER_ROUTER_STATE_DIR=/var/lib/layer-router
USER 10001:10001
WORKDIR /var/lib/layer-router
VOLUME ["/var/lib/layer-router"]
# 8000: the API (KServe v2, OpenAI); 8002: the admin listener (/metrics, /status).
EXPOSE 8000 8002
# slim images have no curl: the interpreter that is there asks the readiness endpoint.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
ENTRYPOINT ["layer-router"]
CMD ["serve", "--host", "0.0.0.0"]
