# The executor image: `dscbatch executor` (no engine, no extra) and the sandbox it runs generated code in.
# From the repository root:  docker build -f k8s/images/executor.Dockerfile -t dscbatch-executor:0.1.0 .
FROM python:3.11-slim-bookworm

# tini, as PID 1, passes SIGTERM to dscbatch (Celery's warm shutdown: running programs finish). bubblewrap is the
# sandbox (prlimit comes with util-linux). Generated code runs under Debian's own /usr/bin/python3, the default
# DSCBATCH_SANDBOX_PYTHON, not dscbatch's interpreter in /usr/local; numpy because DeepSeek's HumanEval import
# helper imports it, as their evaluation environment has it.
# The other languages' toolchains (scripts/toolchains.txt, docs/evaluation-languages.md) run in the same sandbox;
# the list is bound for this step only (BuildKit), not copied into the image.
RUN --mount=type=bind,source=scripts/toolchains.txt,target=/tmp/toolchains.txt \
    apt-get update \
    && apt-get install -y --no-install-recommends tini bubblewrap python3 python3-numpy \
    && grep -v '^#' /tmp/toolchains.txt | xargs apt-get install -y --no-install-recommends \
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
RUN pip install --no-cache-dir "."
# The test dependencies of HumanEval-X's and DeepSeek's tests, from Debian (scripts/toolchains.txt): the Java tests'
# javatuples jar is /usr/share/java/javatuples-1.2.jar (libjavatuples-java); the Go tests' module (go.mod and
# vendor/ with testify) is built here from golang-github-stretchr-testify-dev. k8s/base/executor.yaml points
# DSCBATCH_SANDBOX_JAVA_CLASSPATH and DSCBATCH_SANDBOX_GO_MODULE at them.
RUN python -m dscbatch.executor.go_module /opt/dscbatch/go-module

ENV HOME=/home/dscbatch PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["tini", "--", "dscbatch"]
CMD ["--help"]
