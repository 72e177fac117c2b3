"""Issue 22: only the store package reads or writes Redis. The import-linter contract in pyproject keeps ``redis``
out of every other package; this keeps them off the store's client (``JobStore.client`` is for tests and
benchmarks)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "jobs", "workers", "executor", "server", "monitoring", "cli", "curation")
CLIENT_USE = re.compile(r"\.client\b")


def test_no_module_outside_the_store_uses_its_redis_client() -> None:
    store = ROOT / "jobs" / "store"
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py")) if store not in path.parents
             for number, line in enumerate(path.read_text().splitlines(), 1) if CLIENT_USE.search(line)]
    assert not found, "use a JobStore method (jobs/store/) instead:\n" + "\n".join(found)
