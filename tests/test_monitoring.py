"""Monitoring: the worker's /metrics and /healthz, the exporter, alert rules and the dashboard, checked with
promtool and a real Prometheus server scraping the shared worker through a job."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dscbatch.core.celery_app import enqueue_verifications, make_app
from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.monitoring.job_counters import JobCounters
from dscbatch.monitoring.server import MetricsServer
from dscbatch.monitoring.worker_metrics import WorkerMetrics
from dscbatch.workers.embedded import free_port, stop_process
from dscbatch.workers.engine import Completion, EngineResult

from .batch_api import Server, keys, server
from .conftest import (
    ROOT,
    claimants,
    engine_core,
    engines_paused,
    start_executor,
    step_until,
    wait_until,
    worker_env,
)
from .test_verification import GOOD, WRONG, stored_job, wait_for_verdicts

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "prometheus" / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dscbatch.json"
START_SECONDS = 30

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None or shutil.which("prometheus") is None,
                                reason="needs Debian's prometheus package (scripts/setup installs it)")
engine = pytest.mark.engine
__all__ = ["keys", "server"]  # fixtures


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def wait_until_answers(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        try:
            if get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {START_SECONDS} s")


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> (labels, value) of every sample in a text-format scrape."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(scrape: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for found, v in samples(scrape).get(name, []) if labels.items() <= found.items())


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60)


# -- PromQL in the dashboard and the rules ----------------------------------------------------------------------

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are neither functions, keywords, label
    names nor inside strings, label matchers, ranges or grouping clauses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()", expr)
    return {name for name in names if name.lower() not in PROMQL_WORDS}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC{...}, LABEL): the metric is what it reads
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match, variable["query"]
            exprs.append(match.group(1))
    return exprs


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def as_query(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in, as Prometheus would be asked it."""
    return expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$job", ".*")


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exporter_port(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    with log.open("wb") as stream:
        process = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "exporter", "--port", str(port)],
                                   stdout=stream, stderr=subprocess.STDOUT, env=worker_env(settings),
                                   start_new_session=True)
    yield from serving(process, port)


def serving(process: subprocess.Popen[bytes], port: int) -> Iterator[int]:
    """``port`` once the process's /healthz answers there; the process is stopped afterwards."""
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/healthz", process)
        yield port
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def executor_metrics_port(settings: Settings, store: JobStore,
                          tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    process = start_executor(settings, store, tmp_path_factory.mktemp("executor") / "executor.log",
                             "--metrics-port", str(port))
    yield from serving(process, port)


@pytest.fixture(scope="module")
def executor_scrape(settings: Settings, store: JobStore, executor_metrics_port: int) -> str:
    """The executor's /metrics once it judged a job of two items (outputs: one passing, then one failing and
    one passing)."""
    job_id = stored_job(store, [[GOOD], [WRONG, GOOD]])
    enqueue_verifications(make_app(settings), settings.key_prefix, job_id, [0, 1])
    wait_for_verdicts(store, job_id)
    return get(f"http://127.0.0.1:{executor_metrics_port}/metrics")[1]


@pytest.fixture(scope="module")
def prometheus(worker_metrics_port: int, exporter_port: int, executor_metrics_port: int, server: Server,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on loopback scraping the shared worker, the exporter, an executor and the Batch API
    server every second, with the rules."""
    directory = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "dscbatch-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_metrics_port}"]}]},
            {"job_name": "dscbatch-exporter", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]},
            {"job_name": "dscbatch-executor",
             "static_configs": [{"targets": [f"127.0.0.1:{executor_metrics_port}"]}]},
            {"job_name": "dscbatch-server", "static_configs": [{"targets": [server_address(server)]}]},
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/-/ready", process)
        yield url
    finally:
        stop_process(process)


def server_address(server: Server) -> str:
    return server.base_url.removeprefix("http://").removesuffix("/v1")


def query(prometheus: str, expr: str) -> dict[str, Any]:
    status, body = get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    answer: dict[str, Any] = json.loads(body)
    assert status == 200 and answer["status"] == "success", (expr, body)
    return answer


def answers(prometheus: str, expr: str, expected: float, timeout: float = 30) -> None:
    """Wait until Prometheus answers ``expr`` with one series of value ``expected`` (it scrapes every second)."""
    deadline = time.monotonic() + timeout
    while (got := [float(r["value"][1]) for r in query(prometheus, expr)["data"]["result"]]) != [expected]:
        assert time.monotonic() < deadline, f"Prometheus answers {got} to {expr}, not {expected}"
        time.sleep(0.5)


@dataclass(frozen=True)
class ObservedJob:
    job_id: str
    total: int
    worker_during: str  # scrapes while the job runs
    exporter_during: str
    worker_after: str  # scrapes once every item has a result
    exporter_after: str
    server_after: str  # the Batch API server's, after a few requests


@pytest.fixture(scope="module")
def observed_job(settings: Settings, store: JobStore, worker: subprocess.Popen[bytes], worker_metrics_port: int,
                 exporter_port: int, prometheus: str, server: Server, keys: Any, tiny_model: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> ObservedJob:
    """A job of 62 items (one fails in the worker: min_tokens above max_tokens; two repeat the first), scraped
    while it runs and after; Prometheus scrapes throughout. The Batch API answers a request and refuses one."""
    client = server.client(keys.create("monitoring"))
    client.files.list()
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_none")
    lines = [{"id": f"m{i}", "prompt": f"# item {i}\ndef f{i}():", "params": {"max_tokens": 256, "ignore_eos": True}}
             for i in range(59)]
    lines.insert(7, {"id": "bad", "prompt": "x", "params": {"max_tokens": 2, "min_tokens": 5}})
    lines += [{**lines[0], "id": f"again-m0-{n}"} for n in range(2)]  # answered by m0's run
    path = tmp_path_factory.mktemp("job") / "job.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    worker_url, exporter_url = (f"http://127.0.0.1:{port}/metrics" for port in (worker_metrics_port, exporter_port))
    core = engine_core(worker)
    # The engine is held and let run a few steps at a time until the worker has counted an item: the scrapes
    # "during" land while the job runs, on a machine of any speed.
    with engines_paused(core):
        submitted = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "submit", str(path), "--model",
                                    str(tiny_model)], env=worker_env(settings), capture_output=True, text=True,
                                   timeout=120, check=True)
        job_id = submitted.stdout.split()[-1]
        step_until(core, lambda: bool(value(get(worker_url)[1], "dscbatch_worker_items_total", job_id=job_id)),
                   300, "the worker to count an item of the job")
        worker_during, exporter_during = get(worker_url)[1], get(exporter_url)[1]
    assert value(exporter_during, "dscbatch_job_items", job_id=job_id, status="pending") > 0
    # Every item has its result and no shard is held: a worker counts a shard's items just after storing its
    # results, and releases the shard's claim after that, so the scrapes "after" see the whole job (a scrape
    # at the last result alone missed the last shard's count on a fast machine: 57 done against 59).
    wait_until(lambda: not store.status(job_id).pending and not claimants(store, settings.key_prefix), 300,
               "every item's result and no shard claimed")
    return ObservedJob(job_id, len(lines), worker_during, exporter_during, get(worker_url)[1], get(exporter_url)[1],
                       get(f"http://{server_address(server)}/metrics")[1])


# -- tests ------------------------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml", cwd=RULES.parent)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    config = promtool("check", "config", "prometheus.yml", cwd=RULES.parent)
    assert config.returncode == 0, config.stdout + config.stderr


def test_each_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((RULES.parent / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in rules() if "alert" in rule}


@engine
def test_scrapes_of_the_worker_exporter_and_server_during_a_job_pass_promtool(observed_job: ObservedJob) -> None:
    for scrape in (observed_job.worker_during, observed_job.exporter_during, observed_job.worker_after,
                   observed_job.exporter_after, observed_job.server_after):
        checked = promtool("check", "metrics", stdin=scrape)
        assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stdout + checked.stderr
    assert value(observed_job.exporter_during, "dscbatch_job_info", job_id=observed_job.job_id, state="running") == 1
    routes = {(labels["route"], labels["status"]) for labels, _ in
              samples(observed_job.server_after)["dscbatch_server_requests_total"]}
    assert {("/v1/files", "200"), ("/v1/batches/{batch_id}", "404")} <= routes  # templates, never ids


@engine
def test_worker_metrics_count_the_jobs_items_tokens_and_failures(observed_job: ObservedJob, store: JobStore,
                                                                 tiny_model: Path) -> None:
    scrape, job = observed_job.worker_after, {"job_id": observed_job.job_id}
    status = store.status(observed_job.job_id)
    # The worker counts the engine's runs: the two repeated items shared their original's.
    assert status.deduplicated == 2
    assert value(scrape, "dscbatch_worker_items_total", outcome="done", **job) == status.done - 2 == \
        observed_job.total - 3
    assert value(scrape, "dscbatch_worker_items_total", outcome="failed", **job) == 1
    assert value(scrape, "dscbatch_worker_item_errors_total", code="invalid_request", **job) == 1
    assert value(scrape, "dscbatch_worker_prompt_tokens_total", **job) == status.prompt_tokens
    assert value(scrape, "dscbatch_worker_generated_tokens_total", **job) == status.completion_tokens > 0
    queue = f"dsctest.{tiny_model.name}"
    assert samples(scrape)["dscbatch_worker_items_total"][0][0]["queue"] == queue
    assert value(scrape, "dscbatch_worker_shard_duration_seconds_count") >= 15  # 60 runs, 4 a shard
    assert value(scrape, "dscbatch_worker_running_requests") == 0
    assert value(scrape, "dscbatch_worker_engine_start_duration_seconds") > 0
    assert time.time() - value(scrape, "dscbatch_worker_heartbeat_timestamp_seconds") < 30
    # vLLM's own metrics, renamed and labelled like the worker's.
    assert value(scrape, "vllm_prompt_tokens_total", model=tiny_model.name, queue=queue) >= status.prompt_tokens
    assert value(scrape, "vllm_prefix_cache_queries_total", model=tiny_model.name) >= status.prompt_tokens
    assert "vllm_kv_cache_usage_ratio" in samples(scrape) and "vllm_num_requests_waiting" in samples(scrape)
    assert not [name for name in samples(scrape) if ":" in name]


@engine
def test_exporter_reports_the_job_and_the_worker(observed_job: ObservedJob, tiny_model: Path) -> None:
    scrape, job = observed_job.exporter_after, {"job_id": observed_job.job_id}
    assert value(scrape, "dscbatch_job_items", status="done", **job) == observed_job.total - 1
    assert value(scrape, "dscbatch_job_items", status="failed", **job) == 1
    assert value(scrape, "dscbatch_job_items", status="pending", **job) == 0
    assert value(scrape, "dscbatch_job_deduplicated_items", **job) == 2
    assert value(scrape, "dscbatch_job_info", state="completed_with_errors", **job) == 1
    assert value(scrape, "dscbatch_jobs", state="completed_with_errors") >= 1
    queue = f"dsctest.{tiny_model.name}"
    # At least the shared worker: one stopped by another test stays alive until its heartbeat expires.
    assert value(scrape, "dscbatch_workers_alive", queue=queue, model=tiny_model.name) >= 1
    assert value(scrape, "dscbatch_worker_alive_info", queue=queue) == value(scrape, "dscbatch_workers_alive",
                                                                             queue=queue)


def test_executor_metrics_count_each_verdict(executor_scrape: str) -> None:
    checked = promtool("check", "metrics", stdin=executor_scrape)
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stdout + checked.stderr
    queue = {"queue": "dsctest.executor"}
    counts = {verdict: value(executor_scrape, "dscbatch_executor_executions_total", verdict=verdict, **queue)
              for verdict in ("passed", "failed", "timeout", "memory", "sandbox_error")}
    assert counts == {"passed": 2, "failed": 1, "timeout": 0, "memory": 0, "sandbox_error": 0}
    assert value(executor_scrape, "dscbatch_executor_sandbox_duration_seconds_count", **queue) == 3
    assert 0 < value(executor_scrape, "dscbatch_executor_sandbox_duration_seconds_sum", **queue) < 30
    assert time.time() - value(executor_scrape, "dscbatch_executor_heartbeat_timestamp_seconds", **queue) < 30


@engine
def test_every_metric_the_dashboard_and_alerts_use_is_in_a_real_scrape(observed_job: ObservedJob,
                                                                        executor_scrape: str) -> None:
    scraped = set().union(*(samples(scrape) for scrape in (observed_job.worker_after, observed_job.exporter_after,
                                                            observed_job.server_after, executor_scrape)))
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used = set().union(*map(metric_names, dashboard_exprs() + [rule["expr"] for rule in rules()]))
    assert {"dscbatch_job_items", "dscbatch_worker_items_total", "vllm_prefix_cache_hits_total",
            "dscbatch_worker_shard_duration_seconds_bucket", "up"} <= used  # the parser finds names
    # `up` is Prometheus's own, one per target; recorded series are defined in the rules themselves.
    assert used - scraped - recorded == {"up"}


@engine
def test_prometheus_scrapes_the_job_and_runs_every_dashboard_and_rule_query(observed_job: ObservedJob,
                                                                            executor_scrape: str,
                                                                            prometheus: str) -> None:
    job = observed_job.job_id
    settled = f'sum(dscbatch_worker_items_total{{job_id="{job}", outcome=~"done|failed"}})'
    answers(prometheus, settled, observed_job.total - 2)  # the engine's runs: two items repeated another
    answers(prometheus, f'dscbatch_job_items{{job_id="{job}", status="done"}}', observed_job.total - 1)
    deadline = time.monotonic() + 30
    for expr in dashboard_exprs():  # every panel shows something after a real job
        # A rate needs two scrapes of its counter: one first counted at the job's end needs one more.
        while not query(prometheus, as_query(expr))["data"]["result"]:
            assert time.monotonic() < deadline, expr
            time.sleep(0.5)
    for expr in [rule["expr"] for rule in rules()]:
        query(prometheus, expr)  # Prometheus parses and runs it
    loaded = json.loads(get(f"{prometheus}/api/v1/rules")[1])["data"]["groups"]
    assert sum(len(group["rules"]) for group in loaded) == len(rules())
    assert all(rule["health"] != "err" for group in loaded for rule in group["rules"]), loaded


def test_exporter_reports_a_queue_nobody_serves(settings: Settings, store: JobStore, exporter_port: int,
                                                tiny_model: Path, tmp_path: Path) -> None:
    unserved = tmp_path / "unserved-model"  # the same files under another name: its own queue, no worker
    unserved.symlink_to(tiny_model, target_is_directory=True)
    path = tmp_path / "waiting.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(10)))
    submitted = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "submit", str(path), "--model",
                                str(unserved)], env=worker_env(settings), capture_output=True, text=True,
                               timeout=120, check=True)
    job_id = submitted.stdout.split()[-1]
    try:
        time.sleep(1.1)
        scrape = get(f"http://127.0.0.1:{exporter_port}/metrics")[1]
        queue = {"queue": "dsctest.unserved-model", "model": "unserved-model"}
        assert value(scrape, "dscbatch_queue_pending_shards", **queue) == 3  # 4 items a shard
        assert value(scrape, "dscbatch_queue_pending_requests", **queue) == 10
        assert value(scrape, "dscbatch_queue_unacked_shards", **queue) == 0
        assert 1 <= value(scrape, "dscbatch_queue_oldest_pending_age_seconds", **queue) < 60
        assert value(scrape, "dscbatch_workers_alive", **queue) == 0
        assert value(scrape, "dscbatch_job_info", job_id=job_id, state="queued") == 1
    finally:
        store.cancel(job_id)


def test_exporter_keeps_finished_jobs_to_the_most_recent(settings: Settings, store: JobStore,
                                                         tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "exporter.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "exporter", "--port", str(port),
                                    "--recent-jobs", "1"], stdout=log, stderr=subprocess.STDOUT,
                                   env=worker_env(settings), start_new_session=True)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/healthz", process)
        scrape = get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        stop_process(process)
    # One scrape's own view: jobs may settle meanwhile.
    by_state = {labels["state"]: count for labels, count in samples(scrape)["dscbatch_jobs"]}
    shown = Counter(labels["state"] for labels, _ in samples(scrape)["dscbatch_job_info"])
    unfinished = by_state["submitting"] + by_state["queued"] + by_state["running"]
    assert shown["submitting"] + shown["queued"] + shown["running"] == unfinished
    assert shown.total() - unfinished == min(1, sum(by_state.values()) - unfinished)
    assert sum(by_state.values()) == len(store.job_ids())


def test_healthz_follows_the_heartbeat() -> None:
    metrics = WorkerMetrics("m", "q.m")
    server = MetricsServer(0, metrics.registry, metrics.is_alive, host="127.0.0.1")
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert get(f"{url}/healthz")[0] == 503  # no heartbeat yet: the engine is still starting
        metrics.heartbeat(ttl=30)
        assert get(f"{url}/healthz") == (200, "ok\n")
        metrics.heartbeat(ttl=0.2)
        time.sleep(0.3)
        assert get(f"{url}/healthz")[0] == 503
        assert "dscbatch_worker_heartbeat_timestamp_seconds" in get(f"{url}/metrics")[1]
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@engine
def test_the_shared_workers_healthz_answers(worker: Any, worker_metrics_port: int) -> None:
    assert get(f"http://127.0.0.1:{worker_metrics_port}/healthz") == (200, "ok\n")


def test_per_job_counters_keep_the_most_recent_jobs() -> None:
    counters = JobCounters({"model": "m", "queue": "q.m"}, keep=2)
    done = EngineResult("0", [Completion("x", "length", [1, 2, 3])], 5, 2, None)
    for job_id in ("a", "b", "a", "c"):
        counters.add(job_id, [done], skipped=1)
    families = {family.name: family for family in counters.collect()}
    items = {(s.labels["job_id"], s.labels["outcome"]): s.value for s in families["dscbatch_worker_items"].samples}
    assert items == {(job, outcome): count for job, counts in (("a", (2, 0, 2)), ("c", (1, 0, 1)))
                     for outcome, count in zip(("done", "failed", "skipped"), counts, strict=True)}
    generated = {s.labels["job_id"]: s.value for s in families["dscbatch_worker_generated_tokens"].samples}
    assert generated == {"a": 6, "c": 3}


def test_a_taken_metrics_port_is_one_line_error(settings: Settings, tiny_model: Path) -> None:
    with MetricsServer(0, WorkerMetrics("m", "q.m").registry, lambda: True, host="127.0.0.1").httpd as taken:
        result = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "exporter", "--port",
                                 str(taken.server_port)], env=worker_env(settings),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot serve metrics on 0.0.0.0:") and "Traceback" not in result.stderr
