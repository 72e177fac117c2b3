"""Repository-level prompts: files ordered so that each comes after the repo files it imports.

DeepSeek Coder was trained on repositories laid out this way (dependency order, each file under a
``# {path}`` header); the target file comes last. The order is stable: files with no import relation keep
the order the request gave them, and import cycles are broken by that order too.
"""

from __future__ import annotations

import heapq
import posixpath
import re
from collections.abc import Sequence

from dscbatch.jobs.requests import RepoFile, RepoTarget

_PYTHON_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+import\s+([\w., ()*]+)|import\s+([\w., ]+))", re.M)
_JS_IMPORT = re.compile(r"""(?:\bfrom\s*|\brequire\(\s*|\bimport\s*\(?\s*)["']([^"']+)["']""")
_C_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
_JS_EXTENSIONS = (".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs")


def _stem(path: str) -> str:
    return posixpath.splitext(path)[0]


def _python_candidates(importer: str, module: str, names: str) -> list[str]:
    """Paths (without extension) that ``from module import names`` / ``import module`` may refer to."""
    dots = len(module) - len(module.lstrip("."))
    parts = [part for part in module.lstrip(".").split(".") if part]
    if dots:
        base = posixpath.dirname(importer)
        for _ in range(dots - 1):
            base = posixpath.dirname(base)
        roots = [posixpath.join(base, *parts)] if parts else [base]
    else:
        roots = [posixpath.join(*parts)] if parts else []
    candidates: list[str] = []
    for root in roots:
        candidates += [root, posixpath.join(root, "__init__")]
        for name in re.findall(r"\w+", names):
            candidates.append(posixpath.join(root, name))
    return candidates


def _dependencies(index: int, file: RepoFile, by_stem: dict[str, int], paths: Sequence[str]) -> set[int]:
    found: set[int] = set()
    path = file.path
    candidates: list[str] = []
    if path.endswith(".py"):
        for module, names, plain in _PYTHON_IMPORT.findall(file.content):
            if plain:
                for name in plain.split(","):
                    candidates += _python_candidates(path, name.strip().split(" ")[0], "")
            else:
                candidates += _python_candidates(path, module, names)
    elif path.endswith(_JS_EXTENSIONS):
        for target in _JS_IMPORT.findall(file.content):
            if target.startswith("."):
                joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
                candidates += [_stem(joined), posixpath.join(joined, "index")]
    for include in _C_INCLUDE.findall(file.content):
        local = posixpath.normpath(posixpath.join(posixpath.dirname(path), include))
        found.update(i for i, other in enumerate(paths) if other in (local, include) or other.endswith("/" + include))
    for candidate in candidates:
        # A module path may be rooted below a source folder (``src/pkg/mod.py`` imported as ``pkg.mod``).
        hits = [i for stem, i in by_stem.items() if stem == candidate or stem.endswith("/" + candidate)]
        found.update(hits)
    found.discard(index)
    return found


def order_files(files: Sequence[RepoFile]) -> list[RepoFile]:
    """``files`` in dependency order, stable otherwise."""
    paths = [file.path.lstrip("./") for file in files]
    by_stem = {_stem(path): i for i, path in enumerate(paths)}
    needs = [_dependencies(i, file, by_stem, paths) for i, file in enumerate(files)]
    users: list[list[int]] = [[] for _ in files]
    for i, deps in enumerate(needs):
        for dep in deps:
            users[dep].append(i)
    waiting = [len(deps) for deps in needs]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    emitted = [False] * len(files)
    order: list[int] = []
    while len(order) < len(files):
        if not ready:  # a cycle: release the earliest file still waiting
            heapq.heappush(ready, next(i for i, done in enumerate(emitted) if not done))
        i = heapq.heappop(ready)
        if emitted[i]:
            continue
        emitted[i] = True
        order.append(i)
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0 and not emitted[user]:
                heapq.heappush(ready, user)
    return [files[i] for i in order]


def _section(path: str, content: str) -> str:
    return f"# {path}\n{content}" + ("" if content.endswith("\n") or not content else "\n")


def repo_context(files: Sequence[RepoFile], target: RepoTarget) -> str:
    """The repository files in dependency order, then the target's header and prefix."""
    context = "".join(_section(file.path, file.content) for file in order_files(files))
    return f"{context}# {target.path}\n{target.prefix}"
