"""Every supported language through its toolchain in the sandbox: a correct solution passes, a wrong one fails,
one that does not compile fails with the compiler's message; languages without a Debian package are refused.

The problems are DeepSeek's own MultiPL-E files (``../shared/eval/multipl-e-deepseek``, read in place).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
import typing
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from dscbatch.core.celery_app import enqueue_verifications, executor_queue, make_app
from dscbatch.core.settings import Settings
from dscbatch.executor import go_module, rust_crates
from dscbatch.executor.extraction import instruct_code, program
from dscbatch.executor.humaneval import job_lines
from dscbatch.executor.languages import DEEPSEEK_TABLE, LANGUAGES, REFUSED, UnknownLanguageError, language
from dscbatch.executor.problems import load_problems
from dscbatch.executor.programs import completion_program, load_language_problems
from dscbatch.executor.sandbox import Sandbox
from dscbatch.executor.toolchain import Toolchains
from dscbatch.jobs.requests import Verify, VerifyLanguage
from dscbatch.jobs.results import ItemInfo, Output, result_line
from dscbatch.jobs.store import JobStatus, JobStore, ResultEntry
from dscbatch.workers.embedded import free_port, stop_process
from tests.conftest import start_executor
from tests.test_evaluation import eval_cli

ROOT = Path(__file__).resolve().parent.parent
SHARED_EVAL = Path(os.environ.get("DSCBATCH_TEST_SHARED_EVAL", ROOT.parent / "shared" / "eval"))
MULTIPLE = SHARED_EVAL / "multipl-e-deepseek"
needs_data = pytest.mark.skipif(not MULTIPLE.is_dir(), reason=f"{MULTIPLE} (DeepSeek's MultiPL-E files) is absent")

# CI installs these toolchains (scripts/setup); the others run under `make test-languages`.
CI_LANGUAGES = {*DEEPSEEK_TABLE, "go", "rs"}
# HumanEval_53_add in every file: (correct, wrong, not compiling) completions of its prompt.
TASK = "HumanEval_53_add"
ADD = {
    "cpp": ("    return x + y;\n", "    return x - y;\n", "    return x + y\n"),
    "java": ("        return x + y;\n", "        return x - y;\n", "        return x + y\n"),
    "php": ("    return $x + $y;\n}\n", "    return $x - $y;\n}\n", "    return $x + $y\n}\n"),
    "ts": ("    return x + y;\n}\n", "    return x - y;\n}\n", "    return x + z;\n}\n"),
    "cs": ("        return x + y;\n", "        return x - y;\n", "        return x + y\n"),
    "sh": ("    echo $(( $1 + $2 ))\n", "    echo $(( $1 - $2 ))\n", None),
    "js": ("    return x + y;\n}\n", "    return x - y;\n}\n", None),
    "go": ("    return x + y\n}\n", "    return x - y\n}\n", "    return x +\n}\n"),
    "rs": ("    x + y\n", "    x - y\n", "    x + z\n"),
    "rb": ("    x + y\nend\n", "    x - y\nend\n", None),
    "lua": ("    return x + y\nend\n", "    return x - y\nend\n", "    return x +\nend\n"),
    "r": ("\n    x + y\n}\n", "\n    x - y\n}\n", None),
    "pl": ("    return $x + $y;\n}\n", "    return $x - $y;\n}\n", None),
    "scala": ("        x + y\n", "        x - y\n", "        x + z\n"),
    "rkt": ("  (+ x y))\n", "  (- x y))\n", None),
    "d": ("{\n    return x + y;\n}\n", "{\n    return x - y;\n}\n", "{\n    return x + z;\n}\n"),
}


@pytest.fixture(scope="module")
def toolchains() -> Toolchains:
    jar = MULTIPLE / "javatuples-1.2.jar"
    from dscbatch.executor.toolchain import Resources

    return Toolchains(Sandbox(), Resources(jars=(str(jar),) if jar.is_file() else ()))


def test_job_lines_accept_exactly_the_languages_the_executor_runs() -> None:
    assert set(typing.get_args(VerifyLanguage)) == set(LANGUAGES)


def test_julia_and_swift_are_refused_with_the_reason(tmp_path: Path) -> None:
    for name in ("jl", "julia", "swift"):
        with pytest.raises(UnknownLanguageError, match="Debian"):
            language(name)
    assert set(REFUSED) == {"jl", "swift"}
    result = eval_cli("--language", "swift", "--samples", str(tmp_path / "s"), "--problems", str(tmp_path / "p"))
    assert result.returncode == 1 and "no Debian package" in result.stderr.strip().splitlines()[-1]


@needs_data
@pytest.mark.parametrize("code", sorted(ADD))
def test_a_correct_solution_passes_a_wrong_one_fails_and_a_broken_one_fails_with_the_compilers_message(
        toolchains: Toolchains, code: str) -> None:
    lang = LANGUAGES[code]
    if code not in CI_LANGUAGES and not toolchains.check(lang).passed:
        pytest.skip(f"{code}'s toolchain is not installed here (make test-languages installs every one)")
    problem = load_language_problems(lang, str(MULTIPLE / f"humaneval-{code}.jsonl"))[TASK]
    correct, wrong, broken = ADD[code]
    verdict = toolchains.run(lang, completion_program(lang, problem, correct))
    assert verdict.status == "passed", verdict.error
    assert toolchains.run(lang, completion_program(lang, problem, wrong)).status == "failed"
    if broken is not None:
        verdict = toolchains.run(lang, completion_program(lang, problem, broken))
        # The compiler's message names the source file (go test compiles and runs in one command).
        assert verdict.status == "failed" and "." + lang.source.rsplit(".")[-1] in verdict.error, verdict.error
        assert "compilation failed" in verdict.error or not lang.compile



# Answers shaped as DeepSeek Coder's instruct model writes them: a fenced block with the whole function, often
# with a main or a usage line. What DeepSeek's extract_generation_code takes from them was checked against their
# utils.py (deepseek-ai/DeepSeek-Coder, Evaluation/HumanEval/utils/utils.py) on these very answers.
INSTRUCT = {
    "cpp": "Here is the code:\n```cpp\n#include<bits/stdc++.h>\nlong add(long x, long y) {\n    return x + y;\n}\n"
           "int main() {\n    assert(add(1,2)==3);\n}\n```\nDone.",
    "java": "```java\nimport java.util.*;\nclass Problem {\n    public static long add(long x, long y) {\n"
            "        return x + y;\n    }\n    public static void main(String[] args) {\n    }\n}\n```",
    "php": "```php\n<?php\nfunction add($x, $y) {\n    return $x + $y;\n}\n?>\n```",
    "ts": "```typescript\nfunction add(x: number, y: number): number {\n    return x + y;\n}\n```",
    "js": "```javascript\nfunction add(x, y){\n  return x + y;\n}\nconsole.log(add(1,2));\n```",
    "cs": "```csharp\nusing System;\nclass Problem {\n    public static long Add(long x, long y) {\n"
          "        return x + y;\n    }\n    public static void Main(string[] args) {\n    }\n}\n```",
    "sh": "```bash\nadd() {\n    echo $(( $1 + $2 ))\n}\n```",
}
# The end of DeepSeek's generation for three of them (the lines above are the prompt's).
DEEPSEEK_GENERATION_ENDS = {
    "cpp": "long add(long x, long y) {\n    return x + y;\n",
    "java": "long add(long x, long y) {\n        return x + y;\n",
    "php": "function add($x, $y) {\n    return $x + $y;\n}\n",
}


@needs_data
@pytest.mark.parametrize("code", sorted(INSTRUCT))
def test_instruct_answers_in_deepseeks_languages_are_extracted_as_theirs_and_pass(toolchains: Toolchains,
                                                                                  code: str) -> None:
    lang = LANGUAGES[code]
    problem = load_language_problems(lang, str(MULTIPLE / f"humaneval-{code}.jsonl"))[TASK]
    line = next(job_lines([problem], "instruct", language=lang))
    assert f"```{lang.full_name.lower()}\n" in line["messages"][0]["content"]
    assert line["metadata"] == {"task_id": TASK, "language": code}
    spec = Verify.model_validate(line["verify"])
    if code in DEEPSEEK_GENERATION_ENDS:
        assert instruct_code(problem.prompt, INSTRUCT[code], lang).endswith(DEEPSEEK_GENERATION_ENDS[code])
    verdict = toolchains.run(lang, program(spec, INSTRUCT[code]))
    assert verdict.passed, verdict.error
    wrong = INSTRUCT[code].replace("x + y", "x - y").replace("$x + $y", "$x - $y").replace("$1 + $2", "$1 - $2")
    assert toolchains.run(lang, program(spec, wrong)).status == "failed"
    block = spec.model_copy(update={"extract": "humaneval_block"})
    assert "#include<bits/stdc++.h>" in program(block, INSTRUCT[code]) or code != "cpp"


@needs_data
def test_base_lines_stop_at_the_files_stop_tokens_and_the_completion_is_cut_there() -> None:
    lang = LANGUAGES["cpp"]
    problem = load_language_problems(lang, str(MULTIPLE / "humaneval-cpp.jsonl"))[TASK]
    line = next(job_lines([problem], "base", language=lang))
    assert line["prompt"] == problem.prompt.strip()
    spec = Verify.model_validate(line["verify"])
    assert spec.stop == ["\n}"] and spec.language == "cpp"
    code = program(spec, "    return x + y;\n}\nint main() { return 1; }\n")
    assert code.count("int main()") == 1 and "return x + y;" in code


def store_item(store: JobStore, job_id: str, verify: dict[str, str], completions: list[str]) -> None:
    """A job of one item with these completions, stored as a worker stores it: waiting for its verification."""
    store.create_job(job_id, {"model": "m", "queue": "q", "created": time.time(), "total": 1, "shards": 0})
    store.save_verify_specs(job_id, {0: Verify.model_validate(verify).model_dump_json()})
    outputs = [Output(completion, "stop", 1) for completion in completions]
    store.record(job_id, [ResultEntry(0, result_line(ItemInfo(0, "item0", "completion", False, None), model="m",
                                                     job_id=job_id, created=0, outputs=outputs), "done",
                                      verify=True)])


def settled_item(store: JobStore, job_id: str, log: Path) -> tuple[JobStatus, dict[str, Any]]:
    """The job's status once it settled (its one item verified) and that item's verification record."""
    deadline = time.monotonic() + 120
    while not (status := store.status(job_id)).settled:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    record: dict[str, Any] = json.loads(next(store.iter_verdicts(job_id, 1)) or "null")
    return status, record


CPP_PROMPT = "#include<cassert>\nlong add(long x, long y) {\n"
CPP_TESTS = "}\nint main() {\n    assert(add(2, 3) == 5);\n}\n"


def test_an_executor_routes_a_language_it_cannot_run_to_one_that_can_and_counts_it_by_language(
        settings: Settings, store: JobStore, tmp_path: Path) -> None:
    """Workers queue every verification on the shared queue: an executor serving Python only moves a C++ item
    to the C++ queue, where an executor that checked C++ at start judges it; /metrics counts it as cpp."""
    job_id = f"lang-{uuid.uuid4().hex[:8]}"
    store_item(store, job_id, {"tests": CPP_TESTS, "prompt": CPP_PROMPT, "language": "cpp"},
               ["    return x + y;\n", "    return x - y;\n"])
    python_only = start_executor(settings, store, tmp_path / "python.log")
    cpp_queue = executor_queue(settings.key_prefix, "cpp")
    try:
        enqueue_verifications(make_app(settings), settings.key_prefix, job_id, [0])
        deadline = time.monotonic() + 60
        while store.client.llen(cpp_queue) == 0:
            assert time.monotonic() < deadline, (tmp_path / "python.log").read_text()[-2000:]
            time.sleep(0.1)
        assert not store.status(job_id).settled
        port = free_port()
        with_cpp = start_executor(settings.model_copy(update={"executor_languages": "cpp"}), store,
                                  tmp_path / "cpp.log", "--metrics-port", str(port))
        try:
            status, record = settled_item(store, job_id, tmp_path / "cpp.log")
            assert (status.verified_samples, status.passed_samples) == (2, 1)
            assert [verdict["status"] for verdict in record["verdicts"]] == ["passed", "failed"]
            assert "Assertion" in record["verdicts"][1]["error"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                scrape = response.read().decode()
            assert 'language="cpp",queue="dsctest.executor",verdict="passed"} 1.0' in scrape
            log = (tmp_path / "cpp.log").read_text()
            assert f"{settings.key_prefix}.executor, {cpp_queue}" in log
        finally:
            stop_process(with_cpp)
    finally:
        stop_process(python_only)


GO_PROMPT = ('package main\n\nimport (\n    "testing"\n    "github.com/stretchr/testify/assert"\n)\n\n'
             "func Add(x int, y int) int {\n")
GO_TESTS = "func TestAdd(t *testing.T) {\n    assert.New(t).Equal(3, Add(1, 2))\n}\n"


def test_an_executor_without_the_go_module_gives_its_tests_a_final_verdict_naming_what_is_missing(
        settings: Settings, store: JobStore, tmp_path: Path) -> None:
    """A Go test importing testify (HumanEval-X's) on an executor that has no Go module: the item is settled
    with a failed verdict that names the import and the setting, and nothing is left to sweep and retry."""
    job_id = f"nomod-{uuid.uuid4().hex[:8]}"
    store_item(store, job_id, {"tests": GO_TESTS, "prompt": GO_PROMPT, "language": "go"}, ["    return x + y\n}\n"])
    executor = start_executor(settings.model_copy(update={"executor_languages": "go", "sandbox_go_module": None}),
                              store, tmp_path / "go.log")
    try:
        enqueue_verifications(make_app(settings), settings.key_prefix, job_id, [0])
        status, record = settled_item(store, job_id, tmp_path / "go.log")
        assert (status.verified_samples, status.passed_samples) == (1, 0)
        [verdict] = record["verdicts"]
        assert verdict["status"] == "failed"
        assert '"github.com/stretchr/testify/assert"' in verdict["error"], verdict["error"]
        assert "no Go module is configured here (DSCBATCH_SANDBOX_GO_MODULE" in verdict["error"]
        assert store.client.zscore(store.waiting_key, f"{job_id}:0") is None
        assert "go runs here with no Go module (DSCBATCH_SANDBOX_GO_MODULE)" in (tmp_path / "go.log").read_text()
    finally:
        stop_process(executor)


@needs_data
def test_multiple_judges_every_language_in_the_folder_and_prints_deepseeks_table(tmp_path: Path) -> None:
    problems, samples = tmp_path / "problems", tmp_path / "samples"
    problems.mkdir()
    samples.mkdir()
    answers = {"cpp": ADD["cpp"][0], "sh": ADD["sh"][1]}  # C++ right, Bash wrong
    for code, completion in answers.items():
        line = next(line for line in (MULTIPLE / f"humaneval-{code}.jsonl").read_text().splitlines()
                    if f'"{TASK}"' in line)
        (problems / f"humaneval-{code}.jsonl").write_text(line + "\n")
        (samples / f"humaneval-{code}.jsonl").write_text(json.dumps({"task_id": TASK, "completion": completion})
                                                         + "\n")
    (problems / "humaneval-swift.jsonl").write_text("")
    report = tmp_path / "report.json"
    result = eval_cli("--language", "multiple", "--problems", str(problems), "--samples", str(samples),
                      "--report", str(report))
    assert result.returncode == 0, result.stderr
    assert "skipping swift: Swift has no Debian package" in result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["C++", "Bash", "Avg"]
    assert row.split() == ["pass@1", "100.0", "0.0", "50.0"]
    written = json.loads(report.read_text())
    assert written["extract"] == "completion" and written["average"] == {"pass@1": 0.5}
    assert {code: value["pass_at_k"]["pass@1"] for code, value in written["languages"].items()} == {
        "cpp": 1.0, "sh": 0.0}


HUMANEVAL_X = SHARED_EVAL / "humaneval-x"
HUMANEVAL_X_FILES = {"python": "python", "cpp": "cpp", "java": "java", "js": "js", "go": "go", "rs": "rust"}
# A representative few per language in CI; `make test-languages` checks all 164 (benchmarks/languages.py --check).
SUBSET = 4


@pytest.mark.skipif(not HUMANEVAL_X.is_dir(), reason=f"{HUMANEVAL_X} (HumanEval-X) is absent")
@pytest.mark.parametrize("code", sorted(HUMANEVAL_X_FILES))
def test_humaneval_x_canonical_solutions_pass_and_bare_prompts_fail_through_eval_samples(
        code: str, tmp_path: Path) -> None:
    if code == "rs" and not rust_crates.packaged():
        pytest.skip("HumanEval-X's Rust tests need Debian's rand, regex and md5 crates (make test-languages)")
    with gzip.open(HUMANEVAL_X / f"humaneval_{HUMANEVAL_X_FILES[code]}.jsonl.gz", "rt") as stream:
        records = [json.loads(line) for line in stream][:SUBSET]
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(record) + "\n" for record in records))
    for kind, expected in (("canonical_solution", "1.000"), ("bare", "0.000")):
        samples = tmp_path / f"{kind}.jsonl"
        samples.write_text("".join(json.dumps({"task_id": record["task_id"], "completion": record.get(kind, "")})
                                   + "\n" for record in records))
        result = eval_cli("--language", code, "--problems", str(problems), "--samples", str(samples),
                          "--go-module", str(HUMANEVAL_X))
        assert result.returncode == 0, result.stderr
        assert f"pass@1           {expected}" in result.stdout, result.stdout


@pytest.mark.skipif(not HUMANEVAL_X.is_dir(), reason=f"{HUMANEVAL_X} (HumanEval-X) is absent")
@pytest.mark.skipif(not go_module.packaged(), reason="Debian's testify is not installed (make test-languages)")
def test_the_go_module_built_from_debians_testify_runs_humaneval_x_go_tests(tmp_path: Path) -> None:
    """The module the executor image builds (executor/go_module.py) in place of HumanEval-X's vendored one."""
    with tempfile.TemporaryDirectory(prefix="dscbatch-test-go-module-") as readable:
        os.chmod(readable, 0o755)  # read by the sandbox's slot uid (tmp_path's folders are the test user's only)
        check_go_module(go_module.build(Path(readable) / "module"), tmp_path)


def check_go_module(module: Path, tmp_path: Path) -> None:
    with gzip.open(HUMANEVAL_X / "humaneval_go.jsonl.gz", "rt") as stream:
        records = [json.loads(line) for line in stream][:2]
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(record) + "\n" for record in records))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": record["task_id"], "completion": completion}) + "\n"
                               for record in records for completion in (record["canonical_solution"], "}\n")))
    result = eval_cli("--language", "go", "--problems", str(problems), "--samples", str(samples),
                      "--go-module", str(module))
    assert result.returncode == 0, result.stderr
    assert "passed               2" in result.stdout and "failed               2" in result.stdout, result.stdout


def test_extract_block_keeps_the_helpers_deepseeks_extraction_drops() -> None:
    """--extract block (issue 26): the whole first code block, so a helper the model wrote above the function
    stays; DeepSeek's extraction starts at the function and loses it."""
    problem = load_problems()["HumanEval/53"]
    answer = "```python\ndef _plus(a, b):\n    return a + b\n\ndef add(x: int, y: int):\n    return _plus(x, y)\n```"
    lines = {extract: next(job_lines([problem], "instruct", extract=extract)) for extract in ("deepseek", "block")}
    specs = {extract: Verify.model_validate(line["verify"]) for extract, line in lines.items()}
    assert (specs["deepseek"].extract, specs["block"].extract) == ("humaneval_instruct", "humaneval_block")
    sandbox = Sandbox()
    assert sandbox.run(program(specs["deepseek"], answer)).status == "failed"  # NameError: _plus
    assert sandbox.run(program(specs["block"], answer)).passed
