"""HumanEval through the job system: one request per problem, built as DeepSeek Coder's scripts build them.

- base: the stripped prompt as a completion request, stopped (and cut) at DeepSeek's stop words;
- instruct: one user message, DeepSeek's instruction with the stripped prompt in a ```python block, rendered
  by the model's chat template.

Each request carries a ``verify`` spec (the problem's tests and its call, and the prompt for extraction), so
the executor pool judges its outputs; the report is built from the results' verification records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from dscbatch.executor.evaluation import Report
from dscbatch.executor.extraction import BASE_STOP
from dscbatch.executor.languages import PYTHON, Language
from dscbatch.executor.problems import Problem, check_call
from dscbatch.executor.programs import LanguageProblem, parts
from dscbatch.jobs.requests import ExtractMode, Params, Verify

PromptStyle = Literal["base", "instruct"]
# How an instruct answer's code is taken: DeepSeek's function-only extraction, or the whole first code block.
InstructExtract = Literal["deepseek", "block"]
MAX_TOKENS = {"base": 512, "instruct": 1024}
EXTRACT: dict[str, ExtractMode] = {"base": "humaneval_base", "deepseek": "humaneval_instruct",
                                   "block": "humaneval_block"}
# DeepSeek's build_deepseekcoder_instruction: the fence is the language's name in lower case.
INSTRUCTION = ("Please continue to complete the function. You are not allowed to modify the given code and do the "
               "completion only. Please return all completed function in a codeblock. Here is the given code to do "
               "completion:\n```{}\n{}\n```")
# DeepSeek's cleanup_code adds these to TypeScript's stop tokens.
TS_STOP = ("\nexport", "\nimport", "\nexport default", "\nimport default", "\nconsole.log")


def instruction(prompt: str, language: Language = PYTHON) -> str:
    return INSTRUCTION.format(language.full_name.lower(), prompt.strip())


def base_stop(language: Language, problem: LanguageProblem | None = None) -> list[str]:
    """Where a base completion is cut: the problem file's stop tokens (Python: DeepSeek's own words)."""
    if language is PYTHON or problem is None:
        return list(language.stop)
    return [*problem.stop_tokens, *(TS_STOP if language.code == "ts" else ())]


def default_params(style: PromptStyle, overrides: Params, stop: list[str] | None = None) -> Params:
    """Greedy, with DeepSeek's output budget for the style; ``overrides`` win."""
    if stop is None:
        stop = list(BASE_STOP)
    return overrides.over(Params(temperature=0.0, max_tokens=MAX_TOKENS[style], n=1,
                                 stop=stop if style == "base" else []))


def job_lines(problems: Iterable[Problem | LanguageProblem], style: PromptStyle, samples: int = 1,
              language: Language = PYTHON, extract: InstructExtract = "deepseek") -> Iterator[dict[str, Any]]:
    """``samples`` job lines per problem (vLLM refuses ``n`` > 1 when greedy; identical greedy lines run once
    and share the result). The id is the task id, with ``#k`` when there are several; the metadata names the
    task (and its language) either way."""
    mode = EXTRACT["base" if style == "base" else extract]
    for problem in problems:
        if isinstance(problem, Problem):
            spec = Verify(tests=check_call(problem), prompt=problem.prompt, extract=mode)
        else:
            fixed = parts(language, problem)
            spec = Verify.model_validate({"tests": fixed.tests, "prompt": fixed.prompt, "extract": mode,
                                          "language": language.code, "setup": fixed.setup,
                                          "stop": base_stop(language, problem) if style == "base" else []})
        verify = spec.model_dump()
        if style == "base":
            request: dict[str, Any] = {"type": "completion", "prompt": problem.prompt.strip()}
        else:
            request = {"type": "chat",
                       "messages": [{"role": "user", "content": instruction(problem.prompt, language)}]}
        metadata = {"task_id": problem.task_id, **({} if language is PYTHON else {"language": language.code})}
        for sample in range(samples):
            yield {"id": problem.task_id if samples == 1 else f"{problem.task_id}#{sample}", **request,
                   "metadata": metadata, "verify": verify}


@dataclass(frozen=True)
class JobOutcome:
    report: Report
    errors: int  # lines that failed in the worker: their samples count as failed
    first_error: str | None


def report_from_results(task_ids: Iterable[str], lines: Iterable[str], outputs_per_line: int) -> JobOutcome:
    """The report from a settled job's result lines (with their verification); a line that failed in the worker
    counts as ``outputs_per_line`` failed samples."""
    outcomes: list[tuple[str, str]] = []
    errors, first_error = 0, None
    for line in lines:
        record = json.loads(line)
        verification = record.get("verification")
        if verification is None:
            errors += 1
            first_error = first_error or json.dumps(record.get("error"))
        statuses = ([verdict["status"] for verdict in verification["verdicts"]] if verification
                    else ["failed"] * outputs_per_line)
        outcomes += [(record["metadata"]["task_id"], status) for status in statuses]
    return JobOutcome(Report.build(task_ids, outcomes), errors, first_error)
