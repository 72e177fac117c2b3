"""End to end through real Redis, real `dscbatch worker` processes and vLLM on the CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from dscbatch.core.settings import Settings
from dscbatch.jobs import parts
from dscbatch.jobs.store import JobStore, PartEntry

from .conftest import (
    ROOT,
    STORE_PAUSE_SECONDS,
    claimants,
    engine_core,
    engines_paused,
    step_until,
    wait_until,
    worker_env,
    worker_paused,
)

pytestmark = pytest.mark.engine
EXAMPLES = ROOT / "examples" / "prompts.jsonl"


def dscbatch(settings: Settings, *args: str, check: bool = True,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", *args], env=worker_env(settings),
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"dscbatch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def input_ids(path: Path) -> list[str]:
    return [line.get("id") or line.get("custom_id") for line in read_jsonl(path)]


def assert_counts_match_results(store: JobStore, job_id: str) -> None:
    """One atomic look at the job: its done and failed counters equal the items its committed parts hold a result
    of, but the voided ones (a retry's failures, until their new result is committed)."""
    snapshot = store.client.pipeline(transaction=True)
    snapshot.hmget(store.job_key(job_id), ["done", "failed", "total"])
    snapshot.lrange(f"{store.job_key(job_id)}:parts", 0, -1)
    snapshot.smembers(store.keys.job_part(job_id, "voided"))
    (done, failed, total), names, voided = snapshot.execute()
    urls = [store.work.part(job_id, PartEntry.parse(name).name) for name in names]  # "NAME TOKENS..."
    stored = {index for url in urls for index, _ in parts.decode(url, store.work.read(url))}
    assert int(done or 0) + int(failed or 0) == len(stored - {int(index) for index in voided}) <= int(total)


def wait_settled(store: JobStore, job_id: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while store.status(job_id).pending and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.status(job_id).pending == 0


def test_mixed_file_comes_back_complete_in_order_with_exact_prompt_ids(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, deepseek_dir: Path,
        tmp_path: Path) -> None:
    submitted = dscbatch(settings, "submit", str(EXAMPLES), "--model", str(tiny_model), "--echo-prompt", "--wait")
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert "7/7 items" in submitted.stderr
    out = tmp_path / "out.jsonl"
    dscbatch(settings, "results", job_id, "-o", str(out))
    results = read_jsonl(out)
    assert [r.get("custom_id") or r.get("id") for r in results] == input_ids(EXAMPLES)
    reference = Tokenizer.from_file(str(deepseek_dir / "tokenizer.json"))
    bos = reference.token_to_id("<｜begin▁of▁sentence｜>")
    for result in results:
        openai = "custom_id" in result
        body = result["response"]["body"] if openai else result
        assert result["error"] is None
        text = body["prompt"].removeprefix("<｜begin▁of▁sentence｜>")
        expected = [bos, *reference.encode(text, add_special_tokens=False).ids]
        assert body["prompt_token_ids"] == expected
        usage = body["usage"]
        assert usage["prompt_tokens"] == len(expected)
        if not openai:
            assert len(result["outputs"]) == 1 and result["model"] == tiny_model.name
            assert usage["completion_tokens"] == result["outputs"][0]["completion_tokens"] > 0
    assert results[0]["metadata"] == {"source": "example"}
    chat = results[-1]["response"]["body"]
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    status = json.loads(dscbatch(settings, "status", job_id, "--json").stdout)
    assert (status["state"], status["done"], status["failed"], status["total"]) == ("completed", 7, 0, 7)
    assert status["prompt_tokens"] == sum((r.get("usage") or r["response"]["body"]["usage"])["prompt_tokens"]
                                          for r in results)


def test_a_submitted_prompt_list_comes_back_as_one_line_with_each_prompts_ids(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, deepseek_dir: Path,
        tmp_path: Path) -> None:
    """``dscbatch submit`` of OpenAI lines whose ``prompt`` is a list (of strings, of token ids): one result line
    each, choice ``p * n + k`` for prompt ``p``, the echoed prompts and ids in order, usage summed."""
    reference = Tokenizer.from_file(str(deepseek_dir / "tokenizer.json"))
    bos = reference.token_to_id("<｜begin▁of▁sentence｜>")
    prompts = ["def fib(n):\n", "import os\n"]
    ids = [[bos, *reference.encode(prompt, add_special_tokens=False).ids] for prompt in prompts]
    path = tmp_path / "lists.jsonl"
    bodies = [("strings", {"prompt": prompts, "n": 2, "temperature": 0.7, "seed": 1}), ("ids", {"prompt": ids[::-1]})]
    path.write_text("".join(json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
                                        "body": {"max_tokens": 3, "ignore_eos": True, **body}}) + "\n"
                            for custom_id, body in bodies))
    submitted = dscbatch(settings, "submit", str(path), "--model", str(tiny_model), "--echo-prompt", "--wait")
    assert "2/2 items" in submitted.stderr
    out = tmp_path / "lists.out"
    dscbatch(settings, "results", submitted.stdout.strip().splitlines()[-1], "-o", str(out))
    strings, token_ids = (result["response"]["body"] for result in read_jsonl(out))
    assert [choice["index"] for choice in strings["choices"]] == [0, 1, 2, 3]
    assert strings["prompt"] == [f"<｜begin▁of▁sentence｜>{prompt}" for prompt in prompts]
    assert strings["prompt_token_ids"] == ids and token_ids["prompt_token_ids"] == ids[::-1]
    assert [choice["index"] for choice in token_ids["choices"]] == [0, 1]
    for body in (strings, token_ids):
        assert body["usage"]["prompt_tokens"] == len(ids[0]) + len(ids[1])
        assert body["usage"]["completion_tokens"] == 3 * len(body["choices"])


def test_prefix_siblings_are_served_every_shared_block_from_the_cache(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, tmp_path: Path) -> None:
    """A shuffled job of 6 groups of 5 requests, each group sharing a 1,024-token prefix (then 8 tokens of its
    own): every request but the first of its group gets the whole prefix from vLLM's prefix cache, as its
    usage's cached tokens show: the ideal block-level count for any block size that divides 1,024 (vLLM's
    128 on the CPU, 16 on a GPU)."""
    rng = random.Random(15)
    prefix, groups, siblings = 1024, 6, 5
    lines = []
    for group in range(groups):
        shared = [rng.randrange(1000, 30000) for _ in range(prefix)]
        firsts = rng.sample(range(1000, 30000), siblings)  # each sibling's own tokens differ from the first
        lines += [{"custom_id": f"g{group}-s{n}", "method": "POST", "url": "/v1/completions",
                   "body": {"prompt": shared + [firsts[n]] + [rng.randrange(1000, 30000) for _ in range(7)],
                            "max_tokens": 4, "temperature": 0, "ignore_eos": True}}
                  for n in range(siblings)]
    rng.shuffle(lines)
    path = tmp_path / "siblings.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    folder = tmp_path / "siblings"
    submitted = dscbatch(settings, "submit", str(path), "--model", str(tiny_model), "--wait", "-o", str(folder))
    cached: dict[str, list[int]] = {}
    for result in read_jsonl(folder / "results.jsonl"):
        usage = result["response"]["body"]["usage"]
        assert usage["prompt_tokens"] == prefix + 8
        cached.setdefault(result["custom_id"].split("-")[0], []).append(
            usage["prompt_tokens_details"]["cached_tokens"])
    assert {group: sorted(counts) for group, counts in cached.items()} == {
        f"g{group}": [0] + [prefix] * (siblings - 1) for group in range(groups)}
    status = store.status(submitted.stdout.split()[-1])
    assert status.cached_prompt_tokens == groups * (siblings - 1) * prefix


def test_two_jobs_at_once(settings: Settings, store: JobStore, worker: Any, tiny_model: Path, tmp_path: Path) -> None:
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name}{i}", "prompt": f"# {name} {i}\ndef f():",
                                            "params": {"max_tokens": 4}}) + "\n" for i in range(10)))
        files.append(path)
    jobs = [dscbatch(settings, "submit", str(path), "--model", str(tiny_model)).stdout.split()[-1] for path in files]
    assert jobs[0] != jobs[1]
    for job_id, path in zip(jobs, files, strict=True):
        wait_settled(store, job_id)
        out = tmp_path / f"{job_id}.out"
        dscbatch(settings, "results", job_id, "-o", str(out))
        assert [r["id"] for r in read_jsonl(out)] == input_ids(path)
    listed = dscbatch(settings, "list").stdout
    assert all(job_id in listed for job_id in jobs)


def test_duplicates_run_once_and_every_id_gets_its_result(settings: Settings, store: JobStore, worker: Any,
                                                          tiny_model: Path, tmp_path: Path) -> None:
    context = "import os\n\n" + "".join(f"def helper_{n}(path):\n    return os.path.join(path, '{n}')\n"
                                        for n in range(30))
    lines = [{"id": f"q{n}", "prompt": f"{context}# question {n % 5}\n", "params": {"max_tokens": 8}}
             for n in range(20)]  # q5 repeats q0, q6 q1, ...: 15 duplicates of 5 prompts
    lines.append({"id": "seeded", "prompt": lines[0]["prompt"], "params": {"max_tokens": 8, "seed": 3,
                                                                           "temperature": 1.0}})
    path = tmp_path / "dups.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    folder = tmp_path / "dups"
    submitted = dscbatch(settings, "submit", str(path), "--model", str(tiny_model), "--wait", "-o", str(folder))
    job_id = submitted.stdout.split()[-1]
    assert f"results in {folder / 'results.jsonl'}" in submitted.stderr
    results = read_jsonl(folder / "results.jsonl")
    assert [r["id"] for r in results] == input_ids(path)
    for number, result in enumerate(results[:20]):
        assert result["error"] is None
        assert result["outputs"] == results[number % 5]["outputs"]  # a duplicate carries its original's output
    assert "deduplicated: 15 items" in dscbatch(settings, "status", job_id).stdout
    status = store.status(job_id)
    assert (status.state, status.done, status.deduplicated) == ("completed", 21, 15)


def test_cancel_drops_pending_shards_and_counts_add_up(settings: Settings, store: JobStore,
                                                        worker: subprocess.Popen[bytes], tiny_model: Path,
                                                        tmp_path: Path) -> None:
    items = 40  # ten shards of 4; the worker holds two at a time
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"x{i}", "params": {"max_tokens": 32, "ignore_eos": True}}) + "\n"
                            for i in range(items)))
    # The engine is held, so `cancel` lands while shards run and others wait in the queue, on any machine.
    with engines_paused(engine_core(worker)):
        job_id = dscbatch(settings, "submit", str(path), "--model", str(tiny_model)).stdout.split()[-1]
        wait_until(lambda: claimants(store, settings.key_prefix), 120, "a shard to start")
        cancelled = dscbatch(settings, "cancel", job_id)
        assert f"job {job_id} cancelled" in cancelled.stdout
    queue = store.status(job_id).queue
    # At every moment while the running shards finish, the counters equal the results stored; the queued shards
    # are skipped.
    deadline = time.monotonic() + 120
    while claimants(store, settings.key_prefix) or store.client.llen(queue):
        assert_counts_match_results(store, job_id)
        assert time.monotonic() < deadline, "the running shards did not finish"
        time.sleep(0.05)
    after = store.status(job_id)
    assert after.state == "cancelled" and after.done <= 8 and after.pending > 0
    assert after.done + after.failed + after.pending == after.total == items
    out = tmp_path / "cancelled.jsonl"
    dscbatch(settings, "results", job_id, "-o", str(out))
    results = read_jsonl(out)
    assert [r["id"] for r in results] == [str(i) for i in range(1, items + 1)]
    assert sum(1 for r in results if r["error"] and r["error"]["code"] == "cancelled") == after.pending
    assert store.status(job_id).done == after.done  # nothing ran after the held shards


def test_results_are_stored_while_their_shard_still_runs(settings: Settings, store: JobStore,
                                                         worker: subprocess.Popen[bytes], tiny_model: Path,
                                                         tmp_path: Path) -> None:
    # One shard: three short requests and a long one. The engine runs a few steps at a time from the moment the
    # shard is claimed, so the short ones finish at once and the long one runs on; theirs must reach the job
    # (its progress, and what a worker that dies keeps) without waiting for the long one or any other result.
    # The long one needs some 15 s of the engine's time here: far more than the slices it is given, however
    # late the test wakes from one (2,048 tokens once finished within a few slices on a loaded machine).
    lines = [{"id": f"short{i}", "prompt": f"# short {i}\n", "params": {"max_tokens": 2}} for i in range(3)]
    lines.append({"id": "long", "prompt": "# long\n", "params": {"max_tokens": 8192, "ignore_eos": True}})
    path = tmp_path / "tail.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    core = engine_core(worker)
    with engines_paused(core):
        job_id = dscbatch(settings, "submit", str(path), "--model", str(tiny_model)).stdout.split()[-1]
        wait_until(lambda: claimants(store, settings.key_prefix), 120, "the shard to start")
        step_until(core, lambda: store.status(job_id).done >= 3, 120, "the short requests' results",
                   pause_seconds=STORE_PAUSE_SECONDS)
        status = store.status(job_id)
        assert (status.done, status.pending) == (3, 1)
    wait_settled(store, job_id)
    assert store.status(job_id).done == 4


def test_retry_runs_failed_items_again(settings: Settings, store: JobStore, worker: Any, tiny_model: Path,
                                       tmp_path: Path) -> None:
    # min_tokens above max_tokens passes submit but the worker refuses it (vLLM's sampling parameters): a
    # worker-side, per-item failure.
    path = tmp_path / "fails.jsonl"
    lines = [{"id": "ok1", "prompt": "a", "params": {"max_tokens": 2}},
             {"id": "bad", "prompt": "b", "params": {"max_tokens": 2, "min_tokens": 5}},
             {"id": "ok2", "prompt": "c", "params": {"max_tokens": 2}}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    waited = dscbatch(settings, "submit", str(path), "--model", str(tiny_model), "--wait", check=False)
    assert waited.returncode == 3
    job_id = waited.stdout.split()[-1]
    assert (store.status(job_id).done, store.status(job_id).failed) == (2, 1)
    # Held, so the counts are looked at while the retried item waits for its new result, on any machine: its
    # failure is voided, no longer counted, though its error record is still in a committed part. The worker
    # itself is held: it refuses the item again without its engine (a paused engine let CI's look come after
    # the new failure: (2, 1, 0)).
    with worker_paused(worker):
        retried = dscbatch(settings, "retry", job_id)
        assert f"job {job_id}: 1 failed items queued again" in retried.stdout
        assert (store.status(job_id).done, store.status(job_id).failed, store.status(job_id).pending) == (2, 0, 1)
        assert_counts_match_results(store, job_id)
    while store.status(job_id).pending:
        assert_counts_match_results(store, job_id)
        time.sleep(0.05)
    status = store.status(job_id)
    assert (status.done, status.failed, status.total) == (2, 1, 3)
    out = tmp_path / "retried.jsonl"
    dscbatch(settings, "results", job_id, "-o", str(out))
    results = read_jsonl(out)
    assert [r["id"] for r in results] == ["ok1", "bad", "ok2"]
    assert results[1]["error"]["code"] == "invalid_request" and "min_tokens" in results[1]["error"]["message"]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            blob = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def test_run_embedded_end_to_end_leaves_nothing_behind(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "run", str(EXAMPLES), "-o", str(out),
                             "--model", str(tiny_model)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert [r.get("custom_id") or r.get("id") for r in read_jsonl(out)] == input_ids(EXAMPLES)
    port = result.stderr.split("127.0.0.1:")[1].split()[0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("dscbatch-run-")]
    assert not _processes_mentioning(f"127.0.0.1:{port}")


def test_run_interrupted_cleans_up(tiny_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "run", str(EXAMPLES), "-o",
                           str(tmp_path / "never.jsonl"), "--model", str(tiny_model)],
                          env=env, stderr=subprocess.PIPE, text=True,
                          # SIGINT as at a terminal, even when this suite runs in the background (a shell then
                          # starts it with SIGINT ignored, and a Python child would inherit that)
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as process:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if line.startswith("job "):
                break
        port = "".join(lines).split("127.0.0.1:")[1].split()[0]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
        assert "interrupted" in process.stderr.read()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("dscbatch-run-")]
    assert not _processes_mentioning(f"127.0.0.1:{port}")


def test_a_request_that_kept_killing_its_worker_ends_as_an_error_record(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, tmp_path: Path) -> None:
    from dscbatch.core.celery_app import enqueue_shard, make_app
    from dscbatch.jobs.submission import SubmitOptions, submit_job
    from dscbatch.workers.tasks import MAX_ITEM_CRASHES, MAX_SHARD_ATTEMPTS

    path = tmp_path / "poison.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"x{i}", "params": {"max_tokens": 3}}) + "\n"
                            for i in range(4)))
    app = make_app(settings)

    def enqueue_after_crashes(queue: str, job_id: str, shard_key: str) -> None:
        # The history a poison request leaves: its shard started (and its worker died) MAX_SHARD_ATTEMPTS
        # times, and item p2, running alone, took the worker down MAX_ITEM_CRASHES times.
        store.client.hset(f"{store.job_key(job_id)}:attempts", shard_key, MAX_SHARD_ATTEMPTS)
        store.client.hset(f"{store.job_key(job_id)}:item_attempts", "2", MAX_ITEM_CRASHES)
        enqueue_shard(app, queue, job_id, shard_key)

    job_id = submit_job(store, enqueue_after_crashes, path, SubmitOptions(model=str(tiny_model), shard_max_requests=4))
    wait_settled(store, job_id)
    out = tmp_path / "poison.out"
    dscbatch(settings, "results", job_id, "-o", str(out))
    results = read_jsonl(out)
    assert [r["id"] for r in results] == ["p0", "p1", "p2", "p3"]
    assert [r["error"]["code"] if r["error"] else None for r in results] == [None, None, "engine_error", None]
    assert "stopped the engine 2 times" in results[2]["error"]["message"]
    assert (store.status(job_id).done, store.status(job_id).failed) == (3, 1)
