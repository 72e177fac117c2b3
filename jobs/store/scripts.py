"""The Lua scripts of the store and of ``jobs.finalize``, one ``.lua`` file each beside this module; ``settle.lua``
is a function that the scripts which move counters include."""

from __future__ import annotations

from importlib.resources import files

import redis
from redis.commands.core import Script

# The scripts that may settle a job start with settle.lua's function.
SETTLING = frozenset({"commit_part", "verdict"})


def source(name: str) -> str:
    text = files(__package__).joinpath(f"{name}.lua").read_text()
    return files(__package__).joinpath("settle.lua").read_text() + text if name in SETTLING else text


def register(client: redis.Redis, name: str) -> Script:
    return client.register_script(source(name))
