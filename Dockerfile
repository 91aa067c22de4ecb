# `ownllm serve` in a container: CPU PyTorch, a non-root user, the run directory as a volume.
#
#   docker build -t ownllm .
#   docker run -p 8000:8000 -v "$PWD/runs/demo:/run-dir" -v "$PWD/api-key.txt:/secrets/api-key:ro" ownllm
#
# The run directory (tokenizer/, checkpoints/, and assistant.db, which the server writes) is mounted
# at /run-dir; the API key is read from /secrets/api-key (the server listens on every address, so
# it requires one). One container is one replica: its conversations live in its own SQLite file.
FROM python:3.11-slim

# The CPU build of PyTorch (the default wheel on PyPI carries gigabytes of CUDA libraries).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OWNLLM_PROGRESS=0

WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && useradd --create-home --uid 10001 ownllm \
    && mkdir -p /run-dir /secrets \
    && chown ownllm /run-dir

USER 10001
VOLUME ["/run-dir"]
EXPOSE 8000
# /health answers 200 once the model is loaded (503 while it loads), without the key.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["ownllm", "serve", "--run", "/run-dir", "--host", "0.0.0.0", "--port", "8000", "--api-key-file", "/secrets/api-key"]
