# vgate gateway: slim, non-root, health-checked. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t vgate-gateway .
# The build stage is the full image (gcc, Python.h: the compiled request path); both stages
# on one Debian suite, so the compiled modules find the C library they were built against.
FROM python:3.11-bookworm AS build
WORKDIR /src
# Dependencies from the hash-pinned lock (scripts/lock.sh), in their own layer; then the
# project alone, so pip resolves nothing and every third-party file is checked.
COPY requirements/gateway.lock ./requirements/
RUN pip install --no-cache-dir --prefix=/install --require-hashes -r requirements/gateway.lock
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY engines ./engines
RUN pip install --no-cache-dir --prefix=/install --no-deps .
# The request path compiled with mypyc (gateway/native.py) from these same sources, into
# /install/share/vgate-native; mypy and the type stubs it checks them with come from the
# dev lock, in this stage only.
COPY requirements/dev.lock ./requirements/
COPY scripts/build_native.py ./scripts/
RUN python -m venv /tools \
    && /tools/bin/pip install --no-cache-dir --require-hashes -r requirements/dev.lock \
    && VGATE_NATIVE_DIR=/install/share/vgate-native /tools/bin/python scripts/build_native.py

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 999 vgate \
    && useradd --system --uid 999 --gid vgate --create-home --home-dir /home/vgate vgate
COPY --from=build /install /usr/local
COPY deploy/docker/gateway.yaml /etc/vgate/vgate.yaml
USER 999
ENV VGATE_NATIVE_DIR=/usr/local/share/vgate-native \
    VGATE_SERVER__HOST=0.0.0.0 \
    VGATE_SERVER__PORT=8000 \
    PYTHONUNBUFFERED=1
# 8000: the OpenAI API, for clients. 9100: the operator listener (metrics, service
# discovery, detailed readiness, /admin), for Prometheus and operators only.
EXPOSE 8000 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["vgate"]
CMD ["serve", "--config", "/etc/vgate/vgate.yaml"]
