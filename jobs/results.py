"""Result records: the native format, and the OpenAI batch output format for jobs read from OpenAI lines.

Records are built where results are produced (worker or submit) and stored as the exact JSON line that
``results`` writes, so that writing a 2M-line output is a plain ordered stream out of Redis.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ItemInfo:
    """What a result line repeats from its request."""

    index: int
    id: str
    type: str
    openai: bool
    metadata: dict[str, Any] | None
    # Set when the job echoes prompts; a line of several prompts has a list of each.
    prompt: str | list[str] | None = None
    prompt_token_ids: list[int] | list[list[int]] | None = None

    @classmethod
    def from_shard_item(cls, item: dict[str, Any]) -> ItemInfo:
        ids = [item["ids"], *item["more"]] if "more" in item else item["ids"]
        return cls(item["i"], item["id"], item["type"], bool(item.get("openai")), item.get("metadata"),
                   item.get("prompt"), ids if "prompt" in item else None)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's text and log-probability, and the most likely tokens at its step, best first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Output:
    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None  # when the request asked for them


def _native_output(output: Output) -> dict[str, Any]:
    record: dict[str, Any] = {"text": output.text, "finish_reason": output.finish_reason,
                              "completion_tokens": output.completion_tokens}
    if output.logprobs is not None:
        record["logprobs"] = [{"token": step.token, "logprob": step.logprob,
                               "top_logprobs": [{"token": token, "logprob": logprob} for token, logprob in step.top]}
                              for step in output.logprobs]
    return record


def _openai_logprobs(output: Output, chat: bool) -> dict[str, Any] | None:
    """Logprobs as OpenAI's completions (parallel lists) or chat (one entry per token) choices carry them."""
    if output.logprobs is None:
        return None
    steps = output.logprobs
    if chat:
        def entry(token: str, logprob: float) -> dict[str, Any]:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", "replace"))}

        return {"content": [{**entry(step.token, step.logprob), "top_logprobs": [entry(*top) for top in step.top]}
                            for step in steps], "refusal": None}
    offsets = [0]
    for step in steps[:-1]:
        offsets.append(offsets[-1] + len(step.token))
    return {"tokens": [step.token for step in steps], "token_logprobs": [step.logprob for step in steps],
            "top_logprobs": [dict(step.top) for step in steps], "text_offset": offsets}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


def _native(item: ItemInfo, model: str, outputs: Sequence[Output], usage: Usage,
            error: dict[str, str] | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": item.id,
        "type": item.type,
        "outputs": [_native_output(output) for output in outputs],
        "usage": vars(usage),
        "model": model,
        "metadata": item.metadata,
        "error": error,
    }
    if item.prompt is not None:
        record["prompt"] = item.prompt
        record["prompt_token_ids"] = item.prompt_token_ids
    return record


def _openai(item: ItemInfo, model: str, job_id: str, outputs: Sequence[Output], usage: Usage,
            error: dict[str, str] | None, created: int) -> dict[str, Any]:
    request_id = f"{job_id}-{item.index}"
    if error is not None:
        return {"id": f"batch_req_{request_id}", "custom_id": item.id, "response": None, "error": error}
    chat = item.type == "chat"
    choices = [
        {"index": i, "finish_reason": output.finish_reason, "logprobs": _openai_logprobs(output, chat),
         **({"message": {"role": "assistant", "content": output.text}} if chat else {"text": output.text})}
        for i, output in enumerate(outputs)
    ]
    body: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{request_id}",
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens}},
    }
    if item.prompt is not None:
        body["prompt"] = item.prompt
        body["prompt_token_ids"] = item.prompt_token_ids
    return {"id": f"batch_req_{request_id}", "custom_id": item.id,
            "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}


def result_line(item: ItemInfo, *, model: str, job_id: str, created: int, outputs: Sequence[Output] = (),
                usage: Usage = Usage(), error_code: str | None = None, error_message: str = "") -> str:
    """The output line for one item: a result, or an error record when ``error_code`` is set."""
    error = None if error_code is None else {"code": error_code, "message": error_message}
    if item.openai:
        record = _openai(item, model, job_id, outputs, usage, error, created)
    else:
        record = _native(item, model, outputs, usage, error)
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800") can only be written escaped
        line = json.dumps(record)
    return line


def output_texts(record: dict[str, Any]) -> list[str]:
    """The generated texts of a result record, native or OpenAI (none for an error record)."""
    if "outputs" in record:
        return [output["text"] for output in record["outputs"]]
    body = (record.get("response") or {}).get("body") or {}
    return [choice["message"]["content"] if "message" in choice else choice["text"]
            for choice in body.get("choices", [])]


def with_verification(line: str, verification: str, passed_only: bool = False) -> str | None:
    """The result line with its ``verification`` record (one verdict per output); with ``passed_only``, only
    the outputs that passed, and None when none did."""
    record = json.loads(line)
    check = json.loads(verification)
    if passed_only:
        keep = [i for i, verdict in enumerate(check["verdicts"]) if verdict["status"] == "passed"]
        if not keep:
            return None
        check["verdicts"] = [check["verdicts"][i] for i in keep]
        if "outputs" in record:
            record["outputs"] = [record["outputs"][i] for i in keep]
        else:
            body = record["response"]["body"]
            body["choices"] = [body["choices"][i] for i in keep]
    record["verification"] = check
    return json.dumps(record, ensure_ascii=False)
