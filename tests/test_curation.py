"""``dscbatch curate``: dedup quality on real code, decontamination, the syntax filter, export, kills and bad input.

The evaluation files are read in place from ``../shared/eval`` beside the checkout (``$DSCBATCH_TEST_EVAL_DIR``
overrides); the tests that need them skip without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dscbatch.core.settings import Settings
from dscbatch.curation.config import Decontaminate, Near
from dscbatch.jobs.store import JobStore
from dscbatch.workers.embedded import stop_process

from .conftest import ROOT, start_executor, wait_until, worker_env

EVAL_DIR = Path(os.environ.get("DSCBATCH_TEST_EVAL_DIR", ROOT.parent / "shared" / "eval"))
needs_eval = pytest.mark.skipif(not (EVAL_DIR / "humaneval-x").is_dir(),
                                reason=f"no HumanEval-X files at {EVAL_DIR} (set DSCBATCH_TEST_EVAL_DIR)")


def _benchmark(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    os.environ.setdefault("DSCBATCH_TEST_EVAL_DIR", str(EVAL_DIR))
    return _benchmark("curate_quality")


def _kept(path: Path) -> list[tuple[str, int]]:
    """(result line id, output number) of each record of a curated JSONL file."""
    return [(line["provenance"]["id"], line["provenance"]["output"])
            for line in map(json.loads, path.read_text().splitlines())]


def curate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "curate", *args], capture_output=True,
                          text=True, timeout=300)


def test_near_dup_precision_and_recall_on_real_files(quality: ModuleType) -> None:
    report = quality.near_dup(files=1500, planted=300, step=Near())
    assert report["pairs_above_threshold"] >= 150
    assert report["precision"] >= 0.95 and report["recall"] >= 0.95, report


@needs_eval
def test_decontamination_removes_every_planted_problem_and_few_real_files(quality: ModuleType) -> None:
    report = quality.decontamination(real=2000, step=Decontaminate(benchmark=quality.benchmark_files()))
    assert report["planted"] == 164 * 7 and report["planted_renamed"] == 164
    assert report["planted_removed"] == report["planted"], report["missed"]
    assert report["real_removed"] < 0.001 * 2000, report["real_removed_examples"]


@needs_eval
def test_syntax_filter_keeps_humaneval_x_solutions_and_drops_them_broken(quality: ModuleType) -> None:
    report = quality.syntax_check()
    assert set(report) == {"cpp", "go", "java", "js", "python", "rust"}
    for language, counts in report.items():
        assert counts == {"solutions": 164, "kept": 164, "broken_dropped": 164}, language


def _result(line_id: str, texts: list[str], verdicts: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"id": line_id, "type": "chat", "model": "m", "error": None, "usage": {},
                              "metadata": {"instruction": f"task {line_id}"},
                              "outputs": [{"text": text, "finish_reason": "stop", "completion_tokens": 1}
                                          for text in texts], **extra}
    if verdicts is not None:
        record["verification"] = {"passed": verdicts.count("passed"), "samples": len(verdicts),
                                  "verdicts": [{"status": status} for status in verdicts]}
    return record


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


GOOD = "```python\ndef add(a, b):\n    # the sum\n    return a + b\n```"
BROKEN = "```python\ndef add(a, b:\n    return a + b\n```"


def test_steps_report_and_keep_the_verified_duplicate(tmp_path: Path) -> None:
    source = _write(tmp_path / "results.jsonl", [
        _result("1", [GOOD, GOOD.replace("# the sum", "#   THE   SUM"), BROKEN], ["failed", "passed", "failed"]),
        _result("2", ["x = 1\n" * 3, "```python\n" + "y" * 2000 + "\n```"], ["passed", "passed"]),
    ])
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    done = curate(str(source), "-o", str(out), "-s", "syntax", "-s", "quality", "-s", "exact", "-s", "near",
                  "--report", str(report))
    assert done.returncode == 0, done.stderr
    assert "wrote 2 of 5 samples" in done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["provenance"]["id"], line["provenance"]["output"]) for line in lines] == [("1", 1), ("2", 0)]
    assert lines[0]["instruction"] == "task 1" and lines[0]["provenance"]["verdict"] == "passed"
    steps = {step["step"]: step for step in json.loads(report.read_text())["steps"]}
    assert (steps["syntax"]["in"], steps["syntax"]["out"]) == (5, 4)
    assert steps["syntax"]["examples"][0]["reason"] == "does not parse as python"
    assert "a line of 2000 characters" in steps["quality"]["examples"][0]["reason"]
    assert (steps["exact"]["in"], steps["exact"]["out"], steps["exact"]["clusters"]) == (3, 2, 1)
    assert steps["exact"]["examples"][0]["kept"] == {"id": "1", "output": 1}


def test_execution_filter_and_dedup_within_one_prompt(tmp_path: Path) -> None:
    source = _write(tmp_path / "results.jsonl", [_result("1", [GOOD, GOOD], ["passed", "passed"]),
                                                 _result("2", [GOOD, "print(2)"], ["passed", "failed"]),
                                                 _result("3", ["print(3)"])])
    out = tmp_path / "out.jsonl"
    done = curate(str(source), "-o", str(out), "-s", "execution", "-s", "exact:scope=prompt")
    assert done.returncode == 0, done.stderr
    kept = _kept(out)
    assert kept == [("1", 0), ("2", 0)]


@pytest.mark.parametrize("form", ["deepseek", "messages"])
@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_export_loads_with_datasets(tmp_path: Path, form: str, suffix: str) -> None:
    datasets = pytest.importorskip("datasets")
    source = _write(tmp_path / "results.jsonl", [_result("1", [GOOD], ["passed"]),
                                                 _result("2", ["print(2)"], metadata={"tag": [1, 2]})])
    out = tmp_path / f"out.{suffix}"
    done = curate(str(source), "-o", str(out), "--format", form)
    assert done.returncode == 0, done.stderr
    loaded = datasets.load_dataset("parquet" if suffix == "parquet" else "json", data_files=str(out),
                                   split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == 2
    first = loaded[0]
    if form == "deepseek":
        assert (first["instruction"], first["output"]) == ("task 1", GOOD)
    else:
        assert first["messages"] == [{"role": "user", "content": "task 1"}, {"role": "assistant", "content": GOOD}]
    assert first["provenance"]["verdict"] == "passed" and first["provenance"]["source"] == str(source)
    assert json.loads(loaded[1]["provenance"]["metadata"]) == {"tag": [1, 2]}


def test_parquet_results_are_read(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dscbatch.jobs.parquet import write_lines

    source = tmp_path / "results.parquet"
    write_lines([json.dumps(_result(str(i), [f"print({i})", "print("], ["passed", "passed"])) for i in range(3)],
                str(source))
    out = tmp_path / "out.jsonl"
    done = curate(str(source), "-o", str(out), "-s", "syntax", "-s", "execution")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["output"] for line in lines] == ["print(0)", "print(1)", "print(2)"]
    assert lines[0]["provenance"]["verdict"] == "passed"
    assert json.loads(lines[0]["provenance"]["metadata"]) == {"instruction": "task 0"}
    not_results = tmp_path / "requests.parquet"
    pq.write_table(pa.table({"id": ["1"], "prompt": ["def f():"]}), str(not_results))
    refused = curate(str(not_results), "-o", str(out.with_suffix(".2.jsonl")))
    assert refused.returncode == 2 and "not a dscbatch results file" in refused.stderr, refused.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["-s", "fuzzy"], "--step fuzzy: unknown step 'fuzzy' (steps: execution, syntax, quality, decontaminate, "
                      "exact, near)"),
    (["-s", "near:shingles=3"], "--step near:shingles=3: shingles: unknown parameter"),
    (["-s", "near:num_perm=100,bands=3"], "--step near:num_perm=100,bands=3: bands (3) must divide num_perm (100)"),
    (["-s", "syntax:language=klingon"], "syntax: unknown language 'klingon'"),
    (["-s", "decontaminate:benchmark=/nonexistent.jsonl"], "decontaminate: /nonexistent.jsonl: no such file"),
])
def test_bad_steps_are_one_line_and_write_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    source = _write(tmp_path / "results.jsonl", [_result("1", [GOOD])])
    done = curate(str(source), "-o", str(tmp_path / "out.jsonl"), *args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.jsonl"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"id": "1", "prompt": "def f():"}\n', "line 1 is not a dscbatch result line"),
    ("not json\n", "line 1 is not JSON"),
])
def test_a_file_that_is_not_results_is_refused(tmp_path: Path, content: str, message: str) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_text(json.dumps(_result("1", [GOOD])) + "\n" + content)
    done = curate(str(source), "-o", str(tmp_path / "out.jsonl"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert message.replace("line 1", "line 2") in done.stderr, done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_missing_input_or_unknown_job_is_one_line(tmp_path: Path, settings: Settings) -> None:
    missing = curate(str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "out.jsonl"))
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such " \
        "results file (nor a job id)"
    job = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "curate", "20261204-101500-ab12cd", "-o",
                          str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=120,
                         env=worker_env(settings))
    assert job.returncode == 2 and job.stderr.strip() == "error: no job '20261204-101500-ab12cd' in Redis (see " \
        "`dscbatch list`)"
    assert not list(tmp_path.iterdir())


def test_a_finished_job_is_curated_with_its_provenance(tmp_path: Path, settings: Settings, store: JobStore) -> None:
    from dscbatch.jobs.results import ItemInfo, Output, result_line
    from dscbatch.jobs.store import ResultEntry

    job_id = f"curate-{uuid.uuid4().hex[:8]}"
    store.create_job(job_id, {"model": "m", "queue": "q", "created": time.time(), "total": 2, "shards": 0,
                              "options": {"defaults": {"temperature": 0.8, "n": 2}}})
    store.record(job_id, [
        ResultEntry(i, result_line(ItemInfo(i, f"item{i}", "completion", False, {"instruction": f"q{i}"}),
                                   model="m", job_id=job_id, created=0,
                                   outputs=[Output(GOOD, "stop", 1), Output(f"print({i})", "stop", 1)]), "done")
        for i in range(2)])
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "curate", job_id, "-o", str(out), "-s",
                           "exact"], capture_output=True, text=True, timeout=120, env=worker_env(settings))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["instruction"], line["output"]) for line in lines] == [("q0", GOOD), ("q0", "print(0)"),
                                                                         ("q1", "print(1)")]
    assert lines[0]["provenance"]["job"] == job_id and lines[0]["provenance"]["model"] == "m"
    assert json.loads(lines[0]["provenance"]["params"]) == {"temperature": 0.8, "n": 2}


def test_a_killed_run_leaves_nothing_and_its_rerun_writes_the_same_output(tmp_path: Path) -> None:
    _corpus_results(tmp_path / "results.jsonl")
    args = [str(tmp_path / "results.jsonl"), "-s", "exact", "-s", "near", "-s", "quality"]
    out = tmp_path / "out" / "curated.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "curate", *args, "-o", str(out)],
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not any((tmp_path / "out").glob(".curated.jsonl.*.partial")):  # pass 2 has started writing
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it wrote"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not out.exists()
    again = curate(*args, "-o", str(out))
    assert again.returncode == 0, again.stderr
    reference = curate(*args, "-o", str(tmp_path / "reference.jsonl"))
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()
    kept = _kept(out)
    assert len(kept) == len(set(kept)) and len(kept) <= 6000
    assert f"wrote {len(kept)} of 6500 samples" in reference.stderr


def _corpus_results(path: Path) -> list[str]:
    """6,500 samples of real code (500 repeated) in 1,625 result lines of 4 outputs."""
    texts = _benchmark("curate_speed").chunks(records=6000, lines=20, shingle=5)
    _benchmark("curate_corpus").write_results(path, texts + texts[:500], per_line=4)
    return texts


@pytest.mark.faults
def test_an_executor_killed_while_it_screens_loses_nothing(tmp_path: Path, settings: Settings,
                                                          store: JobStore) -> None:
    fast = settings.model_copy(update={"visibility_timeout": 10})  # a lost part is sent again after 10 s
    _corpus_results(tmp_path / "results.jsonl")
    args = [str(tmp_path / "results.jsonl"), "-s", "exact", "-s", "near", "-s", "quality"]
    reference = curate(*args, "-o", str(tmp_path / "reference.jsonl"))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "out" / "curated.jsonl"
    out.parent.mkdir()
    first = start_executor(fast, store, tmp_path / "executor-1.log", "--concurrency", "2")
    coordinator = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "curate", *args, "-o", str(out),
                                    "--executors", "--part-lines", "100"], env=worker_env(fast),
                                   stderr=subprocess.PIPE, text=True)
    second = None
    try:
        wait_until(lambda: any(out.parent.glob(".curated.jsonl.curate-*.screening")), 120, "a screened part")
        assert len(list(out.parent.glob(".curated.jsonl.curate-*.screening"))) < 17, "every part was screened"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        second = start_executor(fast, store, tmp_path / "executor-2.log", "--concurrency", "2")
        _, errors = coordinator.communicate(timeout=240)
    finally:
        for process in (coordinator, first, second):
            if process is not None:
                stop_process(process)  # type: ignore[arg-type]
    assert coordinator.returncode == 0, errors
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()
    *table, wrote = reference.stderr.splitlines()
    assert "\n".join(table) in errors and wrote.partition(" to ")[0] in errors  # the same counts
    assert not list(out.parent.glob(".*")), "the screened parts are deleted once the output is written"


def test_a_part_that_is_not_results_is_one_line_from_the_executors(tmp_path: Path, settings: Settings,
                                                                   store: JobStore) -> None:
    lines = [json.dumps(_result(str(i), [f"print({i})"])) for i in range(250)]
    lines[149] = json.dumps({"id": "150", "prompt": "def f():"})
    source = tmp_path / "results.jsonl"
    source.write_text("\n".join(lines) + "\n")
    executor = start_executor(settings, store, tmp_path / "executor.log")
    try:
        done = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "curate", str(source), "-o",
                               str(tmp_path / "out" / "curated.jsonl"), "--executors", "--part-lines", "100"],
                              capture_output=True, text=True, timeout=120, env=worker_env(settings))
    finally:
        stop_process(executor)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {source}: line 150 is not a dscbatch result line (no outputs or " \
        "response): curate reads what `dscbatch results` writes"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
