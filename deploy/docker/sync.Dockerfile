# syntax=docker/dockerfile:1.7
# The fleet sync service (MQTT + admin API). Built from the repository root:
#
#   docker buildx build -f deploy/docker/sync.Dockerfile -t edgeserve-sync:0.1.0 .
#
# Its state (SQLite registry, artifacts, operator key, admin token) lives in
# /var/lib/edgeserve/sync: mount a volume there.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeserve ./edgeserve
COPY edge_agent ./edge_agent
COPY cloud_gateway ./cloud_gateway
COPY sync ./sync
COPY models ./models
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/edgeserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGESERVE_SYNC_ADMIN_HOST=0.0.0.0 \
    EDGESERVE_SYNC_STATE_DIR=/var/lib/edgeserve/sync
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3 -m venv /opt/edgeserve \
    && pip install --no-cache-dir "$(ls /wheels/edgeserve-*.whl)[sync,cpu]"
RUN groupadd --system --gid 10001 edgeserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgeserve \
       --shell /usr/sbin/nologin edgeserve \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/edgeserve /var/lib/edgeserve/sync
USER 10001:10001
WORKDIR /var/lib/edgeserve
# admin API + /metrics
EXPOSE 8720
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8720/v1/health', timeout=2)"]
ENTRYPOINT ["edgeserve"]
CMD ["sync", "run"]
