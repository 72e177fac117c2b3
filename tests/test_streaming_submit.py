"""Submission streams: shards queue while the file is read, a bad line cancels the job at once (or, with
validate-first, refuses it before any shard), and a cancel or delete during submission stops it."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from dscbatch.core.celery_app import make_app, shard_enqueuer
from dscbatch.core.errors import InvalidInputError, SubmissionCancelledError
from dscbatch.core.settings import Settings
from dscbatch.jobs import partitioning, submission
from dscbatch.jobs.grouping import PrefixSorter, cut_shards, item_indices
from dscbatch.jobs.partitioning import StreamingGrouper
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job

HEADER = "# repository context shared by every question of this file\n" * 20  # over one 128-token block
LINES = 3000


def write_lines(path: Path, bad_line: int | None = None) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for n in range(1, LINES + 1):
            if n == bad_line:
                file.write('{"id": "broken", "type": "completion", "prompt": \n')
                continue
            file.write(json.dumps({"id": f"q{n}", "type": "completion", "prompt": f"{HEADER}question {n}"}) + "\n")
    return path


class Recorder:
    """An enqueue callback that notes, for each shard, how many lines had been read and the job's state then."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.read = 0
        self.queued: list[tuple[str, int, str]] = []  # (shard key, lines read, job state)
        self.job_id = ""

    def progress(self, lines: int) -> None:
        self.read = lines

    def __call__(self, queue: str, job_id: str, key: str) -> None:
        self.job_id = job_id
        self.queued.append((key, self.read, self.store.status(job_id).state))


def leftovers(store: JobStore, settings: Settings, job_id: str) -> list[str]:
    keys = [key.decode() for key in store.client.keys(f"{settings.key_prefix}:*")]
    files = [str(path) for path in Path(settings.work_url).rglob("*") if job_id in str(path)]
    return [key for key in keys if job_id in key or key.endswith(":jobs")] + files


@pytest.fixture
def own_store(private_settings: Settings) -> JobStore:
    return JobStore.connect(private_settings)


@pytest.fixture(autouse=True)
def long_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """These files of 3,000 lines stand for files that take longer to read than FIRST_SHARD_SECONDS (a file read
    within it is grouped whole, its shards queued at its end): shards are cut as partitions fill."""
    monkeypatch.setattr(submission, "FIRST_SHARD_SECONDS", 0.0)


def options(model: Path, **changes: Any) -> SubmitOptions:
    return SubmitOptions(model=str(model), shard_max_requests=16, **changes)


def test_the_first_shards_queue_while_the_file_is_still_read(own_store: JobStore, deepseek_dir: Path,
                                                             tmp_path: Path) -> None:
    recorder = Recorder(own_store)
    job_id = submit_job(own_store, recorder, write_lines(tmp_path / "in.jsonl"), options(deepseek_dir),
                        recorder.progress)
    _, read, state = recorder.queued[0]
    assert read <= 1024 + 256 and state == "submitting"  # the first shard ran ahead of the reading
    status = own_store.status(job_id)
    assert (status.state, status.total, status.shards, status.submitting) == ("queued", LINES, len(recorder.queued),
                                                                              False)
    items = [each for key, _, _ in recorder.queued for each in (own_store.load_shard(key) or {})["items"]]
    assert sorted(index for each in items for index in item_indices(each)) == list(range(LINES))


def test_in_a_file_of_spread_siblings_the_first_small_shard_queues_at_once_and_the_rest_waits_for_the_end(
        own_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    """600 contexts of about 1,100 tokens, two questions each, shuffled: the partitions reach 1M prompt tokens
    (the held limit) before the end. The first eviction cuts one shard of 16, queued while the file is still
    read (it used to wait for the next shard, which came at the end of the file); every other context waits
    for its sibling, which the file has shown it has."""
    lines = [(k, q) for k in range(600) for q in range(2)]
    random.Random(0).shuffle(lines)
    path = tmp_path / "spread.jsonl"
    with path.open("w", encoding="utf-8") as file:
        for k, q in lines:
            context = " ".join(f"value_{k}_{j} = {j * k}" for j in range(110))
            file.write(json.dumps({"id": f"c{k}-q{q}", "prompt": f"{context}\n# question {q}\n"}) + "\n")
    recorder = Recorder(own_store)
    submit_job(own_store, recorder, path, options(deepseek_dir), recorder.progress)
    early = [key for key, read, _ in recorder.queued if read < len(lines)]
    assert len(early) == 1 and len(recorder.queued) > 1, recorder.queued[:3]
    assert len((own_store.load_shard(early[0]) or {})["items"]) == 16


def full_sort(shards: list[list[dict[str, Any]]], limits: SubmitOptions) -> list[list[int]]:
    """The item indices of each shard a full sort of the shards' items cuts."""
    with PrefixSorter() as sorter:
        return [[each["i"] for each in shard] for shard in cut_shards(sorter.order(iter(
            [each for shard in shards for each in shard])), limits.shard_max_requests, limits.shard_max_tokens)]


def test_a_file_read_within_the_first_shard_deadline_is_grouped_whole_and_queued_at_its_end(
        own_store: JobStore, deepseek_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submission, "FIRST_SHARD_SECONDS", 3600.0)  # any machine reads 3,000 lines within it
    recorder = Recorder(own_store)
    job_id = submit_job(own_store, recorder, write_lines(tmp_path / "in.jsonl"), options(deepseek_dir),
                        recorder.progress)
    assert {read for _, read, _ in recorder.queued} == {LINES}  # nothing was cut before the end of the file
    shards = [(own_store.load_shard(key) or {})["items"] for key, _, _ in recorder.queued]
    assert [[each["i"] for each in shard] for shard in shards] == full_sort(shards, options(deepseek_dir))
    assert own_store.status(job_id).shards == len(shards) > 1


def test_while_the_queue_holds_shards_no_worker_took_partitions_wait_for_the_end_of_the_file(
        own_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    # One prefix partition (every line shares HEADER): it is cut each time it fills (1,024 lines) while the pool
    # has taken every shard; once shards wait in the queue, it waits for the end of the file instead.
    path = write_lines(tmp_path / "in.jsonl")
    hungry, fed = Recorder(own_store), Recorder(own_store)
    asked: list[str] = []
    submit_job(own_store, hungry, path, options(deepseek_dir), hungry.progress, waiting=lambda queue: 0)
    submit_job(own_store, fed, path, options(deepseek_dir), fed.progress,
               waiting=lambda queue: asked.append(queue) or 1)
    before_end = [sorted({read for _, read, _ in recorder.queued if read < LINES}) for recorder in (hungry, fed)]
    assert len(before_end[0]) == 2 and len(before_end[1]) == 1  # two fills cut; then only the first
    assert set(asked) == {submission.queue_name(own_store.prefix, str(deepseek_dir))}
    assert len(fed.queued) == len(hungry.queued)


def test_a_shard_queue_counts_the_messages_no_worker_has_taken(private_settings: Settings) -> None:
    with shard_enqueuer(make_app(private_settings)) as enqueue:
        queue = f"{private_settings.key_prefix}.nobody-serves-this"
        assert enqueue.waiting(queue) == 0
        for key in ("k1", "k2", "k3"):
            enqueue(queue, "job", key)
        assert (enqueue.waiting(queue), enqueue.waiting(f"{queue}.other")) == (3, 0)


def test_status_shows_the_lines_read_while_the_job_is_submitted(own_store: JobStore, deepseek_dir: Path,
                                                                tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    submit_job(own_store, lambda queue, job, key: seen.append(own_store.status(job).as_dict()),
               write_lines(tmp_path / "in.jsonl"), options(deepseek_dir))
    first = seen[0]
    assert (first["state"], first["submitting"]) == ("submitting", True)
    assert 0 < first["total"] < LINES and first["finished"] is None  # lines read so far; it cannot settle


def test_a_bad_line_late_in_the_file_cancels_the_job_and_leaves_nothing(own_store: JobStore, deepseek_dir: Path,
                                                                        private_settings: Settings,
                                                                        tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", bad_line=2800)
    recorder = Recorder(own_store)
    with pytest.raises(InvalidInputError) as caught:
        submit_job(own_store, recorder, path, options(deepseek_dir), recorder.progress)
    assert recorder.queued  # shards ran before the bad line was read
    assert caught.value.problems == [f"{path}:2800: json: invalid JSON: Expecting value (column 50)"]
    assert f"job {recorder.job_id} was cancelled" in str(caught.value)
    assert leftovers(own_store, private_settings, recorder.job_id) == []


def test_validate_first_refuses_a_bad_file_before_any_shard(own_store: JobStore, deepseek_dir: Path,
                                                            private_settings: Settings, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", bad_line=2999)
    recorder = Recorder(own_store)
    with pytest.raises(InvalidInputError) as caught:
        submit_job(own_store, recorder, path, options(deepseek_dir, validate_first=True))
    assert recorder.queued == [] and str(caught.value).startswith(f"{path}:2999: json: invalid JSON")
    assert "nothing was submitted" in str(caught.value)
    assert [key for key in own_store.client.keys(f"{private_settings.key_prefix}:*")] == []


def test_validate_first_queues_every_shard_once_the_whole_file_is_read(own_store: JobStore, deepseek_dir: Path,
                                                                       tmp_path: Path) -> None:
    recorder = Recorder(own_store)
    job_id = submit_job(own_store, recorder, write_lines(tmp_path / "in.jsonl"),
                        options(deepseek_dir, validate_first=True), recorder.progress)
    assert {(read, state) for _, read, state in recorder.queued} == {(LINES, "queued")}
    assert own_store.status(job_id).shards == len(recorder.queued)
    # Nothing could run before the end of the file: it is grouped whole, as a full sort groups it.
    shards = [(own_store.load_shard(key) or {})["items"] for key, _, _ in recorder.queued]
    assert [[each["i"] for each in shard] for shard in shards] == full_sort(shards, options(deepseek_dir))


def test_a_cancel_during_submission_stops_it_at_the_next_shard(own_store: JobStore, deepseek_dir: Path,
                                                               tmp_path: Path) -> None:
    queued: list[str] = []

    def cancel_at_first(queue: str, job_id: str, key: str) -> None:
        queued.append(job_id)
        own_store.cancel(job_id)

    with pytest.raises(SubmissionCancelledError) as caught:
        submit_job(own_store, cancel_at_first, write_lines(tmp_path / "in.jsonl"), options(deepseek_dir))
    assert len(queued) == 1 and "was cancelled while it was submitted" in str(caught.value)
    status = own_store.status(queued[0])
    assert (status.state, status.submitting, status.settled) == ("cancelled", False, True)
    assert status.total < LINES


def test_a_delete_during_submission_stops_it_and_leaves_nothing(own_store: JobStore, deepseek_dir: Path,
                                                                private_settings: Settings, tmp_path: Path) -> None:
    queued: list[str] = []

    def delete_at_first(queue: str, job_id: str, key: str) -> None:
        queued.append(job_id)
        own_store.delete_job(job_id)

    with pytest.raises(SubmissionCancelledError):
        submit_job(own_store, delete_at_first, write_lines(tmp_path / "in.jsonl"), options(deepseek_dir))
    assert len(queued) == 1 and leftovers(own_store, private_settings, queued[0]) == []


def item(index: int, ids: list[int]) -> dict[str, Any]:
    return {"i": index, "id": f"r{index}", "type": "completion", "ids": ids, "params": {"temperature": 0}}


def test_a_partition_is_cut_once_it_holds_four_shards_and_the_rest_is_sorted_at_the_end() -> None:
    with StreamingGrouper(max_requests=2, max_tokens=1 << 20, key_tokens=2, flush_min_items=0) as grouper:
        early = [grouper.add(item(n, [1, 2, 100 + n])) for n in range(8)]
        others = [grouper.add(item(8 + n, [3, 4, n])) for n in range(3)]
        rest = list(grouper.finish())
    assert [len(shards) for shards in early] == [0] * 7 + [4] and not any(others)
    assert [[each["i"] for each in shard] for shard in early[-1]] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [[each["i"] for each in shard] for shard in rest] == [[8, 9], [10]]


def test_memory_stays_bounded_the_partitions_that_waited_longest_are_cut_first() -> None:
    with StreamingGrouper(max_requests=4, max_tokens=1 << 20, key_tokens=1, held_max_items=10) as grouper:
        handed = [shard for n in range(100) for shard in grouper.add(item(n, [n % 50, n]))]
        assert grouper._held_items <= 10
        handed += list(grouper.finish())
    indices = [each["i"] for shard in handed for each in shard]
    assert sorted(indices) == list(range(100))


def test_evicted_siblings_wait_to_meet_their_later_siblings_and_lone_prompts_are_cut() -> None:
    # 50 contexts of two adjacent questions each, 40 lone prompts, then a third question for each context: the
    # partitions hold 10 items at most, so every pair is evicted long before its third question comes.
    lines = [[k, 2 * k + q] for k in range(50) for q in (0, 1)] + [[1000 + n, n] for n in range(40)]
    lines += [[k, 999] for k in range(50)]
    with StreamingGrouper(max_requests=4, max_tokens=1 << 20, key_tokens=1, held_max_items=10) as grouper:
        early = [shard for n, ids in enumerate(lines) for shard in grouper.add(item(n, ids))]
        rest = list(grouper.finish())
    early_items = {each["i"] for shard in early for each in shard}
    assert sorted([*early_items, *(each["i"] for shard in rest for each in shard)]) == list(range(190))
    assert early_items  # the first eviction is cut: the pool starts early
    waited = [k for k in range(50) if not early_items & {2 * k, 2 * k + 1}]
    assert len(waited) >= 48, waited  # the later pairs waited for the end of the file, where their third is
    assert not early_items & set(range(100, 140))  # lone prompts too: this file's prompts have siblings
    assert [each["ids"][0] for shard in rest for each in shard] == sorted(each["ids"][0] for shard in rest
                                                                           for each in shard)


def test_before_the_first_shard_partitions_wait_for_a_near_end_of_the_file() -> None:
    # The lines of the test above; ``soon``: the submitter expects the end of the file within its deadline.
    lines = [[k, 2 * k + q] for k in range(50) for q in (0, 1)] + [[1000 + n, n] for n in range(40)]
    lines += [[k, 999] for k in range(50)]
    with StreamingGrouper(max_requests=4, max_tokens=1 << 20, key_tokens=1, held_max_items=10,
                          soon=lambda: True) as grouper:
        early = [shard for n, ids in enumerate(lines) for shard in grouper.add(item(n, ids))]
        rest = [[each["i"] for each in shard] for shard in grouper.finish()]
    with PrefixSorter() as sorter:
        whole = [[each["i"] for each in shard]
                 for shard in cut_shards(sorter.order(iter([item(n, ids) for n, ids in enumerate(lines)])), 4,
                                         1 << 20)]
    assert early == [] and rest == whole


def test_after_the_first_shard_a_fed_pool_lets_lone_prompts_wait_too() -> None:
    lines = [[n, 0] for n in range(100)] + [[n, 1] for n in range(100)]  # each prompt's sibling comes last
    handed: dict[bool, set[int]] = {}
    for fed in (False, True):
        with StreamingGrouper(max_requests=4, max_tokens=1 << 20, key_tokens=1, held_max_items=10,
                              fed=lambda fed=fed: fed) as grouper:
            handed[fed] = {each["i"] for n, ids in enumerate(lines) for shard in grouper.add(item(n, ids))
                           for each in shard}
            list(grouper.finish())
    assert len(handed[True]) == 4  # the first shard only
    assert len(handed[False]) > 50  # a hungry pool gets the lone prompts as they are evicted


def early_and_rest(lines: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """The file order of the items cut before the end of the file, and the shards cut at its end (indices)."""
    with StreamingGrouper(max_requests=4, max_tokens=1 << 20, key_tokens=1, held_max_items=10) as grouper:
        early = [each["i"] for n, ids in enumerate(lines) for shard in grouper.add(item(n, ids)) for each in shard]
        rest = [[each["i"] for each in shard] for shard in grouper.finish()]
    return early, rest


def test_lone_prompts_wait_once_their_siblings_turn_out_to_be_spread_over_the_file(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """100 groups of 4 siblings, shuffled over the file, partitions of 10 items at most: a lone prompt cut
    early costs its group a second prefill of their prefix. Once 8 items (and 1% of those read) have met a
    sibling, lone prompts wait: early cuts stop within the first tenth of the file (the window is small against
    it here: a sibling in it is rare), and three groups in four meet whole at its end (without the rule, lone
    prompts are cut all through the file and 15 groups in 100 stay whole)."""
    lines = [[k, q] for k in range(100) for q in range(4)]
    random.Random(0).shuffle(lines)

    def whole_groups() -> tuple[int, list[int], list[list[int]]]:
        early, rest = early_and_rest(lines)
        return 100 - len({lines[n][0] for n in early}), early, rest

    whole, early, rest = whole_groups()
    assert 0 < len(early) <= 30 and max(early) < 45, early  # the pool started
    assert whole >= 72  # these groups' four siblings are neighbours in the end-of-file sort
    order = [lines[n][0] for shard in rest for n in shard]
    assert order == sorted(order)
    monkeypatch.setattr(partitioning, "SIBLINGS_MIN", len(lines) + 1)  # the rule never fires
    assert whole_groups()[0] <= 20


def test_unique_prompts_keep_streaming() -> None:
    """No prompt meets a sibling: no late sibling is ever seen, and lone prompts are cut as they are evicted (what
    an eviction cuts beyond whole shards waits for the end of the file: 140 of 400 items here)."""
    early, rest = early_and_rest([[n, 0] for n in range(400)])
    assert len(early) >= 240 and sorted(early + [n for shard in rest for n in shard]) == list(range(400))


def run_submit(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings,
               *args: str) -> tuple[int, str]:
    from dscbatch.cli.main import main

    monkeypatch.setenv("DSCBATCH_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("DSCBATCH_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("DSCBATCH_WORK_URL", settings.work_url)
    with pytest.raises(SystemExit) as caught:
        main(["submit", *args])
    return int(caught.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("validate_first", [False, True])
def test_submit_of_a_file_with_a_late_bad_line_exits_2_naming_it_and_leaves_nothing(
        validate_first: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        private_settings: Settings, own_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", bad_line=2900)
    jobs = Path(private_settings.work_url) / "jobs"
    before = set(jobs.glob("*"))
    code, err = run_submit(monkeypatch, capsys, private_settings, str(path), "--model", str(deepseek_dir),
                           *(["--validate-first"] if validate_first else []))
    assert code == 2 and f"{path}:2900: json: invalid JSON" in err and "Traceback" not in err
    assert ("nothing was submitted" in err) == validate_first and ("was cancelled" in err) != validate_first
    assert own_store.client.keys(f"{private_settings.key_prefix}:*") == []
    assert set(jobs.glob("*")) == before


def test_status_of_a_job_being_submitted_says_so(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], private_settings: Settings,
                                                 own_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    from dscbatch.cli.main import main

    monkeypatch.setenv("DSCBATCH_REDIS_URL", private_settings.redis_url)
    monkeypatch.setenv("DSCBATCH_KEY_PREFIX", private_settings.key_prefix)
    shown: list[str] = []

    def show_status(queue: str, job_id: str, key: str) -> None:
        if not shown:
            try:
                main(["status", job_id])
            except SystemExit as exit_:
                assert not exit_.code
            shown.append(capsys.readouterr().out)

    submit_job(own_store, show_status, write_lines(tmp_path / "in.jsonl"), options(deepseek_dir))
    assert "state submitting" in shown[0] and re.search(r"\(submitting: \d+ lines read, \d+ shards stored so far\)",
                                                        shown[0])
