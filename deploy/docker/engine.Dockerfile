# vgate engine node (GPU): the official vLLM image plus the vgate supervisor in its own
# virtualenv, so vLLM's pinned dependencies and vgate's never meet. It runs
# `vgate engines run`, which launches vLLM (the image's python) and publishes the
# engines to Redis for every gateway. Build from the repository root:
#   docker build -f deploy/docker/engine.Dockerfile -t vgate-engine .
FROM vllm/vllm-openai:v0.11.0
WORKDIR /opt/vgate-src
# The supervisor's dependencies from the hash-pinned lock (scripts/lock.sh; its hashes
# cover every wheel of each release, this image's Python included), then the project alone.
COPY requirements/gateway.lock ./requirements/
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY engines ./engines
RUN python3 -m venv /opt/vgate \
    && /opt/vgate/bin/pip install --no-cache-dir --require-hashes -r requirements/gateway.lock \
    && /opt/vgate/bin/pip install --no-cache-dir --no-deps . \
    && useradd --system --uid 999 --create-home --home-dir /home/vgate vgate \
    && mkdir -p /models /home/vgate/.cache/vgate \
    && chown -R vgate /models /home/vgate
COPY deploy/docker/engine.yaml /etc/vgate/vgate.yaml
USER 999
ENV VGATE_ENGINES__PYTHON=/usr/bin/python3 \
    VGATE_MODEL_CACHE=/models \
    PYTHONUNBUFFERED=1
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["/opt/vgate/bin/python", "-c", "import os; os.kill(1, 0)"]
ENTRYPOINT ["/opt/vgate/bin/vgate"]
CMD ["engines", "run", "--config", "/etc/vgate/vgate.yaml"]
