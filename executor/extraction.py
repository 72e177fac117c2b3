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
"""

from __future__ import annotations

import re

from dscbatch.jobs.requests import Verify

BASE_STOP = ("\ndef", "\nclass", "\nif", "\n#", "\nprint")
IMPORT_HELPER = "\n".join([
    "import math", "import re", "import sys", "import copy", "import datetime", "import itertools",
    "import collections", "import heapq", "import functools", "import hashlib",
    "try:\n    import numpy\n    import numpy as np\nexcept ImportError:\n    pass",
    "import string", "from typing import *", "from collections import *",
]) + "\n"
CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL | re.IGNORECASE)


def truncate(text: str, stops: tuple[str, ...] = BASE_STOP) -> str:
    """``text`` up to the first of ``stops``."""
    cut = min((index for index in (text.find(stop) for stop in stops) if index >= 0), default=len(text))
    return text[:cut]


def first_code_block(text: str) -> str | None:
    found = CODE_BLOCK.findall(text)
    return str(found[0]) if found else None


def _function_name(question: str) -> tuple[str, str]:
    """The last ``def`` line's name part and the lines above it (DeepSeek's ``get_function_name``)."""
    lines = [line for line in question.strip().split("\n") if line.strip()]
    index = [i for i, line in enumerate(lines) if line.startswith("def ")][-1]
    return lines[index].split("(")[0].strip(), "\n".join(lines[:index])


def instruct_code(prompt: str, answer: str) -> str:
    """DeepSeek's ``extract_generation_code`` for Python."""
    block = first_code_block(answer)
    try:
        if block is None:
            raise ValueError("no ```python block")
        name, prefix = _function_name(prompt.strip())
        try:
            start = block.lower().index(name.lower())
            indent = 0
            while start - indent >= 0 and block[start - indent - 1] == " ":
                indent += 1
        except ValueError:
            start, indent = 0, 4
        end = block.rfind("\n" + " " * indent + "}")
        return prefix + "\n" + block[start:end if end >= 0 else len(block)] + "\n"
    except (ValueError, IndexError):
        return prompt + "\n" + answer


def program(spec: Verify, text: str) -> str:
    """The whole program run for one output ``text``: it passes when it exits with status 0."""
    if spec.extract == "text":
        code = spec.prompt + text
    elif spec.extract == "code_block":
        code = spec.prompt + (first_code_block(text) or text)
    elif spec.extract == "humaneval_base":
        code = IMPORT_HELPER + spec.prompt + "\n" + truncate(text)
    else:
        code = IMPORT_HELPER + instruct_code(spec.prompt, text)
    return code + "\n" + spec.tests + "\n"
