"""Whether code parses, per language: Python's own ``ast``, tree-sitter grammars for every other language.

The grammars come from ``tree-sitter-language-pack`` 0.x, whose wheels ship them compiled (its 1.x releases
download each grammar on first use, which a cluster without internet access cannot do).

tree-sitter-cpp (up to 0.23.4, the newest) cannot parse ``typeid(TYPE)``: C++ code is parsed with each
``typeid(`` read as ``sizeof(``, which takes the same operands (a type or an expression) and is as long.
"""

from __future__ import annotations

import ast
import functools
import warnings
from typing import Any

from dscbatch.curation.config import CurateError

# Rewrites of valid code that a grammar does not parse into code of the same shape that it does.
GRAMMAR_GAPS = {"cpp": (("typeid(", "sizeof("),)}
ALIASES = {"py": "python", "js": "javascript", "c++": "cpp", "rs": "rust", "ts": "typescript", "golang": "go",
           "sh": "bash", "cs": "csharp", "c#": "csharp"}


def canonical(language: str) -> str:
    """The grammar's name for ``language``; an unknown one raises :class:`CurateError`."""
    name = ALIASES.get(language.lower(), language.lower())
    if name == "python":
        return name
    from tree_sitter_language_pack import SupportedLanguage

    known = SupportedLanguage.__args__  # type: ignore[attr-defined]
    if name not in known:
        raise CurateError(f"syntax: unknown language {language!r} (python, or one of tree-sitter-language-pack's "
                          f"{len(known)}: cpp, go, java, javascript, rust, typescript, ...)")
    return name


@functools.cache
def _parser(language: str) -> Any:
    from tree_sitter_language_pack import get_parser

    return get_parser(language)  # type: ignore[arg-type]


def parses(code: str, language: str) -> bool:
    """Whether ``code`` is a syntactically valid program (or fragment the grammar accepts) in ``language``."""
    if language == "python":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences warn, they still parse
                ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
        return True
    for gap, same_shape in GRAMMAR_GAPS.get(language, ()):
        code = code.replace(gap, same_shape)
    tree = _parser(language).parse(code.encode("utf-8", "surrogatepass"))
    return not tree.root_node.has_error
