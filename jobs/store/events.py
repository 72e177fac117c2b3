"""A job's events (``P:job:ID:events``, a pub/sub channel): what wakes a command that waits on the job at the
moment it settles, is finalized or cancelled, instead of reading the job's record twenty times a second."""

from __future__ import annotations

from types import TracebackType

import redis


class JobEvents:
    """``with store.events(job_id) as events``: subscribed when made, before the caller's first read of the
    record, so nothing published after that read is missed. ``wait(seconds)`` returns at the next event or after
    ``seconds`` without one; the caller reads the record either way (an event only says "look now", and a change
    that publishes nothing, such as a result that does not settle the job, is seen at the next timeout)."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)

    def wait(self, seconds: float) -> None:
        self._pubsub.get_message(timeout=seconds)

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> JobEvents:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
