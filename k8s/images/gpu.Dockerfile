# The GPU worker image: dscbatch with its `gpu` extra (vLLM with CUDA; the NVIDIA driver comes from the node).
# From the repository root:  docker build -f k8s/images/gpu.Dockerfile -t dscbatch-gpu:0.1.0 .
FROM python:3.11-slim-bookworm

# tini, as PID 1, passes SIGTERM to dscbatch (its warm shutdown) and reaps vLLM's processes; Triton compiles
# its kernel launchers with gcc when the engine starts.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# The same user as the pods' securityContext (runAsUser 10001).
RUN groupadd --gid 10001 dscbatch \
    && useradd --uid 10001 --gid 10001 --home-dir /home/dscbatch --create-home dscbatch

WORKDIR /opt/dscbatch
COPY pyproject.toml README.md ./
COPY core core
COPY curation curation
COPY jobs jobs
COPY workers workers
COPY cli cli
COPY monitoring monitoring
COPY executor executor
COPY server server
RUN pip install --no-cache-dir ".[gpu]"

ENV HOME=/home/dscbatch PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
USER 10001:10001
ENTRYPOINT ["tini", "--", "dscbatch"]
CMD ["--help"]
