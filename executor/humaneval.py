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
from dscbatch.executor.problems import Problem, check_call
from dscbatch.jobs.requests import ExtractMode, Params, Verify

PromptStyle = Literal["base", "instruct"]
MAX_TOKENS = {"base": 512, "instruct": 1024}
EXTRACT: dict[PromptStyle, ExtractMode] = {"base": "humaneval_base", "instruct": "humaneval_instruct"}
# DeepSeek's build_deepseekcoder_instruction, for Python.
INSTRUCTION = ("Please continue to complete the function. You are not allowed to modify the given code and do the "
               "completion only. Please return all completed function in a codeblock. Here is the given code to do "
               "completion:\n```python\n{}\n```")


def instruction(prompt: str) -> str:
    return INSTRUCTION.format(prompt.strip())


def default_params(style: PromptStyle, overrides: Params) -> Params:
    """Greedy, with DeepSeek's output budget for the style; ``overrides`` win."""
    stop = list(BASE_STOP) if style == "base" else []
    return overrides.over(Params(temperature=0.0, max_tokens=MAX_TOKENS[style], n=1, stop=stop))


def job_lines(problems: Iterable[Problem], style: PromptStyle, samples: int = 1) -> Iterator[dict[str, Any]]:
    """``samples`` job lines per problem (vLLM refuses ``n`` > 1 when greedy; identical greedy lines run once
    and share the result). The id is the task id, with ``#k`` when there are several; the metadata names the
    task either way."""
    for problem in problems:
        verify = Verify(tests=check_call(problem), prompt=problem.prompt, extract=EXTRACT[style]).model_dump()
        if style == "base":
            request: dict[str, Any] = {"type": "completion", "prompt": problem.prompt.strip()}
        else:
            request = {"type": "chat", "messages": [{"role": "user", "content": instruction(problem.prompt)}]}
        for sample in range(samples):
            yield {"id": problem.task_id if samples == 1 else f"{problem.task_id}#{sample}", **request,
                   "metadata": {"task_id": problem.task_id}, "verify": verify}


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
