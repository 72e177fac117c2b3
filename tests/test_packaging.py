"""The Python floor that pyproject declares is the one the code is checked against (ruff's target, mypy's version)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_declared_python_floor_is_the_one_ruff_and_mypy_check() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = re.fullmatch(r">=\s*3\.(\d+)", project["project"]["requires-python"])
    assert floor is not None, project["project"]["requires-python"]
    minor = int(floor[1])
    # ruff's UP rules then reject syntax and imports newer than the floor (datetime.UTC needs 3.11).
    assert project["tool"]["ruff"]["target-version"] == f"py3{minor}"
    assert project["tool"]["mypy"]["python_version"] == f"3.{minor}"
    assert minor >= 11  # datetime.UTC (jobs/submission.py), tomllib
