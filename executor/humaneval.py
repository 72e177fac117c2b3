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


def default_params(style: PromptStyle, samples: int, overrides: Params) -> Params:
    """Greedy, DeepSeek's output budget for the style, ``samples`` outputs per problem; ``overrides`` win."""
    stop = list(BASE_STOP) if style == "base" else []
    return overrides.over(Params(temperature=0.0, max_tokens=MAX_TOKENS[style], n=samples, stop=stop))


def job_lines(problems: Iterable[Problem], style: PromptStyle) -> Iterator[dict[str, Any]]:
    """One job line per problem (its id is the task id)."""
    for problem in problems:
        verify = Verify(tests=check_call(problem), prompt=problem.prompt, extract=EXTRACT[style]).model_dump()
        if style == "base":
            yield {"id": problem.task_id, "type": "completion", "prompt": problem.prompt.strip(), "verify": verify}
        else:
            yield {"id": problem.task_id, "type": "chat", "verify": verify,
                   "messages": [{"role": "user", "content": instruction(problem.prompt)}]}


def report_from_results(task_ids: Iterable[str], lines: Iterable[str], samples: int) -> Report:
    """The report from a settled job's result lines (with their verification): a request that failed in the
    worker counts as ``samples`` failed samples."""
    outcomes: list[tuple[str, str]] = []
    for line in lines:
        record = json.loads(line)
        verification = record.get("verification")
        statuses = ([verdict["status"] for verdict in verification["verdicts"]] if verification
                    else ["failed"] * samples)
        outcomes += [(record["id"], status) for status in statuses]
    return Report.build(task_ids, outcomes)
