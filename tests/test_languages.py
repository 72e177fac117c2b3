"""Every supported language through its toolchain in the sandbox: a correct solution passes, a wrong one fails,
one that does not compile fails with the compiler's message; languages without a Debian package are refused.

The problems are DeepSeek's own MultiPL-E files (``../shared/eval/multipl-e-deepseek``, read in place).
"""

from __future__ import annotations

import os
import typing
from pathlib import Path

import pytest

from dscbatch.executor.languages import LANGUAGES, REFUSED, UnknownLanguageError, language
from dscbatch.executor.programs import completion_program, load_language_problems
from dscbatch.executor.sandbox import Sandbox
from dscbatch.executor.toolchain import Toolchains
from dscbatch.jobs.requests import VerifyLanguage
from tests.test_evaluation import eval_cli

ROOT = Path(__file__).resolve().parent.parent
SHARED_EVAL = Path(os.environ.get("DSCBATCH_TEST_SHARED_EVAL", ROOT.parent / "shared" / "eval"))
MULTIPLE = SHARED_EVAL / "multipl-e-deepseek"
needs_data = pytest.mark.skipif(not MULTIPLE.is_dir(), reason=f"{MULTIPLE} (DeepSeek's MultiPL-E files) is absent")

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
    assert set(REFUSED) == {"jl", "lua", "swift"}
    result = eval_cli("--language", "swift", "--samples", str(tmp_path / "s"), "--problems", str(tmp_path / "p"))
    assert result.returncode == 1 and "no Debian package" in result.stderr.strip().splitlines()[-1]


@needs_data
@pytest.mark.parametrize("code", sorted(ADD))
def test_a_correct_solution_passes_a_wrong_one_fails_and_a_broken_one_fails_with_the_compilers_message(
        toolchains: Toolchains, code: str) -> None:
    lang = LANGUAGES[code]
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

