# The gateway's own image. BASE is any image with python3 (3.11+) and its venv module:
# python:3.11-slim with a registry, or the local Debian base that kernel_image/build.sh makes.
# Python packages (the gateway's own wheel included) come from wheels the host put into
# deploy/.wheels: pip inside an image build cannot verify TLS here, and needs no network.
ARG BASE=python:3.11-slim
FROM ${BASE}

LABEL org.opencontainers.image.title="exec-gateway" \
      org.opencontainers.image.description="Stateful sandboxed Python sessions over REST, WebSocket and Jupyter"

RUN python3 -m venv /opt/gateway
COPY deploy/.wheels /tmp/wheels
RUN /opt/gateway/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir -q \
        'exec-gateway[docker,redis]' && \
    rm -rf /tmp/wheels

ENV PATH=/opt/gateway/bin:$PATH \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_LAUNCHER=docker
EXPOSE 8888
HEALTHCHECK --interval=10s --timeout=3s CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/healthz', timeout=2)"
ENTRYPOINT ["exec-gateway"]
