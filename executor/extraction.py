"""The program a sample is judged by: the code taken from a model's output (per ``verify.extract``) and tests.

The two ``humaneval_*`` modes follow DeepSeek Coder's own evaluation scripts (``Evaluation/HumanEval`` in
deepseek-ai/DeepSeek-Coder) so that their published pass@1 can be reproduced:

- base (``humaneval.py`` with ``utils.cleanup_code``): the model continues the stripped prompt; its text is cut
  at the first of ``\\ndef``, ``\\nclass``, ``\\nif``, ``\\n#``, ``\\nprint``, and the code is the
  unstripped ``prompt + "\\n" + text``;
- instruct (``utils.extract_generation_code``): the first ```python block of the answer, from the function's
  name on (with its indentation), below the prompt's lines above the last ``def``; an answer without a block
  is kept as ``prompt + "\\n" + answer``, as theirs is.

Both put DeepSeek's import helper first (their ``IMPORT_HELPER["python"]``; numpy only where installed).
Other languages follow the same two scripts with the language's settings (executor/languages.py): base
completions are cut at the problem file's ``stop_tokens``, instruct answers give the code block fenced with
the language's name (``cpp``, ``java``, ``csharp``...), and executor/programs.py puts the problem's fixed
parts around the code. ``humaneval_block`` keeps the answer's whole first code block instead (issue 26).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dscbatch.executor.languages import LANGUAGES, PYTHON, Language
from dscbatch.executor.programs import IMPORT_HELPER, assemble
from dscbatch.jobs.requests import Verify

BASE_STOP = PYTHON.stop


def truncate(text: str, stops: Sequence[str] = BASE_STOP) -> str:
    """``text`` up to the first of ``stops``."""
    cut = min((index for index in (text.find(stop) for stop in stops) if index >= 0), default=len(text))
    return text[:cut]


def first_code_block(text: str, fence: str = "python") -> str | None:
    """The first ```fence block of ``text`` (DeepSeek's pattern: the fence is the language's lower-case name)."""
    found = re.findall(f"```{re.escape(fence)}\n(.*?)```", text, re.DOTALL | re.IGNORECASE)
    return str(found[0]) if found else None


def _function_name(question: str, language: Language = PYTHON) -> tuple[str, str]:
    """DeepSeek's ``get_function_name``: the function's line (the last ``def`` in Python, else the prompt's
    last line up to its ``{``) and the lines above it."""
    lines = [line for line in question.strip().split("\n") if line.strip()]
    if language is PYTHON:
        index = [i for i, line in enumerate(lines) if line.startswith("def ")][-1]
        return lines[index].split("(")[0].strip(), "\n".join(lines[:index])
    return lines[-1].split("{")[0].strip(), "\n".join(lines[:-1])


def instruct_code(prompt: str, answer: str, language: Language = PYTHON, whole_block: bool = False) -> str:
    """DeepSeek's ``extract_generation_code``: the answer's first code block for the language, less any
    ``main`` (the tests have theirs), from the function's name on below the prompt's lines above it, cut
    before the function's closing brace (the tests close it; PHP, TypeScript and JavaScript get it back).
    ``whole_block`` keeps the block from its start, without the prompt's lines (imports and helpers the model
    wrote stay). An answer without a block is kept as ``prompt + "\n" + answer``, as theirs is."""
    block = first_code_block(answer, language.full_name.lower())
    if block is None:
        return prompt + "\n" + answer
    if whole_block and language is PYTHON:
        return block
    if language.main is not None and language.main in block:
        block = block[:block.index(language.main)]
    try:
        name, prefix = _function_name(prompt.strip(), language)
    except IndexError:
        return prompt + "\n" + answer
    indent = language.indent
    start = block.lower().find(name.lower())
    if whole_block or start < 0:
        start = 0
    else:
        indent = 0
        while start - indent >= 0 and block[start - indent - 1] == " ":
            indent += 1
    end = block.rfind("\n" + " " * indent + "}")
    body = block[start:end if end >= 0 else len(block)]
    if language.close_brace:
        body += "\n" + " " * indent + "}"
    return (body if whole_block else prefix + "\n" + body) + "\n"


def program(spec: Verify, text: str) -> str:
    """The whole program run for one output ``text``: it passes when it exits with status 0."""
    language = LANGUAGES[spec.language]
    if spec.extract == "text":
        return spec.prompt + text + "\n" + spec.tests + "\n"
    if spec.extract == "code_block":
        return spec.prompt + (first_code_block(text, language.full_name.lower()) or text) + "\n" + spec.tests + "\n"
    if spec.extract == "humaneval_base":
        code = spec.prompt + "\n" + truncate(text, spec.stop or language.stop)
    else:
        code = instruct_code(spec.prompt, text, language, whole_block=spec.extract == "humaneval_block")
    if language is PYTHON:
        return IMPORT_HELPER + code + "\n" + spec.tests + "\n"
    return assemble(language, spec.setup, code, spec.tests)
