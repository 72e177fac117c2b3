"""A Redis crash that loses the tail of its append-only file, for the Redis fault test and the chaos benchmark
(benchmarks/scale.py --chaos --truncate-aof): redis-server started with ``AOF`` writes timestamps; after a
SIGKILL, ``truncate`` cuts the AOF back to a noted second before Redis is started again on it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

AOF = ("--appendonly", "yes", "--appendfsync", "everysec", "--aof-timestamp-enabled", "yes")


def truncate(folder: Path, noted: int) -> None:
    """Cut the AOF in redis-server's data ``folder`` back to the ``noted`` second (redis-server stopped)."""
    manifest = folder / "appendonlydir" / "appendonly.aof.manifest"
    truncated = subprocess.run([shutil.which("redis-check-aof") or "redis-check-aof", "--truncate-to-timestamp",
                                str(noted), str(manifest)], capture_output=True, text=True, check=False)
    if truncated.returncode != 0 or "Successfully truncated" not in truncated.stdout:
        raise RuntimeError(f"redis-check-aof did not truncate: {truncated.stdout}{truncated.stderr}")
