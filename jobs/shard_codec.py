"""A shard payload's bytes in Redis: its items as JSON, their token ids packed apart, all zlib-compressed.

Token ids are most of a shard (a 950-token prompt is about 4.6 KB of JSON digits), and formatting them as
JSON was the largest cost of ``submit`` besides the tokenizer itself (0.15 s of 2.5 s for 2,000 such lines).
Packed as little-endian unsigned 32-bit integers they are copied, not formatted; each item keeps the lengths
to cut them apart again (``lengths``: its prompt's, then those of its line's other prompts, ``more``).

Layout: ``zlib(len(json) as 4 bytes little-endian + json + ids)``, zlib at its fastest level: on a shard of
256 such prompts as JSON it took a fifth of the default level's time (8 ms against 46 ms) for 1.4x its bytes,
and ``submit``'s time should be the tokenizer's.
"""

from __future__ import annotations

import json
import sys
import zlib
from array import array
from typing import Any

COMPRESSION_LEVEL = 1
_HEADER = 4


def _ids() -> array[int]:
    packed = array("I")
    assert packed.itemsize == 4, "unsigned int is not 32 bits on this platform"
    return packed


def encode(payload: dict[str, Any]) -> bytes:
    """The bytes stored for ``payload`` (a shard: its header fields and ``items``, each with ``ids``)."""
    ids = _ids()
    items = []
    for item in payload["items"]:
        prompts = [item["ids"], *item.get("more", ())]
        for prompt in prompts:
            ids.extend(prompt)
        items.append({**{name: value for name, value in item.items() if name not in ("ids", "more")},
                      "lengths": [len(prompt) for prompt in prompts]})
    if sys.byteorder == "big":
        ids.byteswap()
    text = json.dumps({**payload, "items": items}, separators=(",", ":")).encode()
    return zlib.compress(len(text).to_bytes(_HEADER, "little") + text + ids.tobytes(), COMPRESSION_LEVEL)


def decode(data: bytes) -> dict[str, Any]:
    """The payload that ``encode`` stored as ``data``."""
    raw = zlib.decompress(data)
    size = int.from_bytes(raw[:_HEADER], "little")
    payload: dict[str, Any] = json.loads(raw[_HEADER:_HEADER + size])
    packed = _ids()
    packed.frombytes(raw[_HEADER + size:])
    if sys.byteorder == "big":
        packed.byteswap()
    ids = packed.tolist()
    start = 0
    for item in payload["items"]:
        prompts = []
        for length in item.pop("lengths"):
            prompts.append(ids[start:start + length])
            start += length
        item["ids"] = prompts[0]
        if len(prompts) > 1:
            item["more"] = prompts[1:]
    return payload
