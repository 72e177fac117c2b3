"""Batches through ``dscbatch serve`` and the session's real worker (vLLM on the CPU), read with the ``openai``
SDK: every custom_id comes back exactly once across the output and error files, and bodies parse as the SDK's
``Completion`` and ``ChatCompletion``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from dscbatch.jobs.store import JobStore
from dscbatch.jobs.tokenizer import ModelTokenizer, model_name
from dscbatch.server.keys import ApiKeys

from .batch_api import Server, chat_line, completion_line, file_lines, jsonl, keys, server, wait_for

__all__ = ["keys", "server"]  # fixtures
pytestmark = pytest.mark.engine


def run_batch(server: Server, keys: ApiKeys, store: JobStore, name: str, endpoint: str,
              lines: list[dict[str, Any]]) -> Any:
    client = server.client(keys.create(name))
    source = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint=endpoint,  # type: ignore[arg-type]
                                  completion_window="24h")
    # Validated and queued when create returns; a small batch may already be finalizing or done by then.
    assert batch.status in ("in_progress", "finalizing", "completed"), batch.errors
    done = wait_for(client, batch.id, {"completed", "failed"})
    assert done.status == "completed" and done.completed_at and done.finalizing_at and done.in_progress_at
    job = next(job for job in store.statuses(store.job_ids()) if job.input == f"{source.id} (batch {batch.id})")
    assert job.results_url == f"{server.files}/jobs/{job.id}/results.jsonl"  # split from the finalized file
    return client, done


def test_completions_batch_plain_fim_and_a_failed_line(server: Server, keys: ApiKeys, store: JobStore,
                                                        worker: Any, tiny_model: Path) -> None:
    model = model_name(str(tiny_model))
    lines = [completion_line("plain", model, prompt="def fib(n):\n"),
             completion_line("fim", model, prompt="def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))\n"),
             completion_line("too-long", model, prompt="x", max_tokens=10_000_000),
             completion_line("stop", model, prompt="import os\n", stop="\n", seed=7, logprobs=2)]
    client, batch = run_batch(server, keys, store, "completions-user", "/v1/completions", lines)
    assert [m.id for m in client.models.list()] == [model]
    output, errors = file_lines(client, batch.output_file_id), file_lines(client, batch.error_file_id)
    assert [r["custom_id"] for r in output] == ["plain", "fim", "stop"]  # input order
    assert [(r["custom_id"], r["error"]["code"]) for r in errors] == [("too-long", "prompt_too_long")]
    assert batch.request_counts.model_dump() == {"total": 4, "completed": 3, "failed": 1}
    for record in output:
        assert record["response"]["status_code"] == 200
        body = Completion.model_validate(record["response"]["body"])
        assert body.object == "text_completion" and len(body.choices) == 1 and body.usage is not None
        assert body.usage.completion_tokens > 0 and body.model == model
    stopped = Completion.model_validate(output[2]["response"]["body"]).choices[0].logprobs
    assert stopped is not None and stopped.tokens and stopped.top_logprobs and stopped.token_logprobs
    assert len(stopped.tokens) == len(stopped.token_logprobs) == output[2]["response"]["body"]["usage"][
        "completion_tokens"] and all(len(top) == 2 for top in stopped.top_logprobs)


def test_chat_batch(server: Server, keys: ApiKeys, store: JobStore, worker: Any, tiny_model: Path) -> None:
    model = model_name(str(tiny_model))
    lines = [chat_line("q1", model, "Reverse a string in Rust.", logprobs=True, top_logprobs=2),
             chat_line("q2", model, "hi", n=2, seed=3, temperature=0.8)]
    client, batch = run_batch(server, keys, store, "chat-user", "/v1/chat/completions", lines)
    output = file_lines(client, batch.output_file_id)
    assert file_lines(client, batch.error_file_id) == [] and [r["custom_id"] for r in output] == ["q1", "q2"]
    bodies = [ChatCompletion.model_validate(r["response"]["body"]) for r in output]
    assert [len(body.choices) for body in bodies] == [1, 2]
    assert all(choice.message.role == "assistant" for body in bodies for choice in body.choices)
    steps = bodies[0].choices[0].logprobs
    assert steps is not None and steps.content and all(len(step.top_logprobs) == 2 for step in steps.content)
    assert bodies[1].choices[0].logprobs is None  # not asked for


ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
                 "required": ["answer"], "additionalProperties": False}


def test_structured_outputs_obey_the_response_format(server: Server, keys: ApiKeys, store: JobStore, worker: Any,
                                                      tiny_model: Path) -> None:
    """OpenAI's batch guide line with a ``response_format``, as curator sends one for a pydantic model, and JSON
    mode: the tiny random model's output parses, and obeys the schema."""
    model = model_name(str(tiny_model))
    schema = {"type": "json_schema", "json_schema": {"name": "Answer", "schema": ANSWER_SCHEMA, "strict": True}}
    lines = [chat_line("schema", model, "Is water wet?", max_tokens=32, response_format=schema),
             chat_line("object", model, "Reply in JSON.", max_tokens=8, response_format={"type": "json_object"}),
             {**chat_line("parts", model, "", max_completion_tokens=4, presence_penalty=0.5, user="u1"),
              "body": {"model": model, "max_completion_tokens": 4, "presence_penalty": 0.5, "user": "u1",
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello "},
                                                                  {"type": "text", "text": "world"}]}]}}]
    client, batch = run_batch(server, keys, store, "structured-user", "/v1/chat/completions", lines)
    output = {r["custom_id"]: ChatCompletion.model_validate(r["response"]["body"])
              for r in file_lines(client, batch.output_file_id)}
    assert file_lines(client, batch.error_file_id) == [] and list(output) == ["schema", "object", "parts"]
    answer = json.loads(output["schema"].choices[0].message.content or "")
    assert answer in ({"answer": "yes"}, {"answer": "no"})
    assert (output["object"].choices[0].message.content or "").startswith("{")
    assert output["parts"].usage is not None and output["parts"].usage.completion_tokens <= 4


def test_prompt_lists_give_one_line_with_a_choice_per_prompt_in_order(server: Server, keys: ApiKeys, store: JobStore,
                                                                      worker: Any, tiny_model: Path) -> None:
    """``prompt`` as a list of strings, of token ids, with FIM's suffix and with ``n``: one line per custom_id,
    choice ``p * n + k`` answering prompt ``p`` (greedy choices equal the same prompts sent alone), usage summed;
    a list with a token outside the vocabulary fails as one line."""
    model = model_name(str(tiny_model))
    prompts = ["def fib(n):\n", "import os\n", "class A:\n"]
    tokenizer = ModelTokenizer.load(str(tiny_model))
    ids, rendered = tokenizer.encode(prompts[0]), tokenizer.with_bos(tokenizer.encode(prompts[0]))
    suffix = "\n\nprint(add(1, 2))\n"
    lines = [completion_line("list", model, prompt=prompts),
             *(completion_line(f"alone-{number}", model, prompt=prompt) for number, prompt in enumerate(prompts)),
             completion_line("token-ids", model, prompt=[rendered, rendered]),
             completion_line("sampled", model, prompt=prompts[:2], n=2, temperature=0.8, seed=3),
             completion_line("fim-list", model, prompt=["def add(a, b):\n    ", "def sub(a, b):\n    "], suffix=suffix),
             completion_line("fim-alone", model, prompt="def sub(a, b):\n    ", suffix=suffix),
             completion_line("outside", model, prompt=[ids, [99999]])]
    client, batch = run_batch(server, keys, store, "prompt-lists-user", "/v1/completions", lines)
    output = {r["custom_id"]: Completion.model_validate(r["response"]["body"])
              for r in file_lines(client, batch.output_file_id)}
    errors = file_lines(client, batch.error_file_id)
    assert list(output) == [line["custom_id"] for line in lines[:-1]]  # one line each, input order
    assert [(r["custom_id"], r["error"]["code"]) for r in errors] == [("outside", "invalid_request")]
    assert batch.request_counts.model_dump() == {"total": 9, "completed": 8, "failed": 1}
    alone = [output[f"alone-{number}"] for number in range(3)]
    listed = output["list"]
    assert [choice.index for choice in listed.choices] == [0, 1, 2]
    assert [choice.text for choice in listed.choices] == [body.choices[0].text for body in alone]
    assert listed.usage is not None and all(body.usage is not None for body in alone)
    assert (listed.usage.prompt_tokens, listed.usage.completion_tokens) == (
        sum(b.usage.prompt_tokens for b in alone if b.usage), sum(b.usage.completion_tokens for b in alone if b.usage))
    tokens = output["token-ids"]
    assert [choice.text for choice in tokens.choices] == [alone[0].choices[0].text] * 2
    assert tokens.usage is not None and alone[0].usage is not None
    assert tokens.usage.prompt_tokens == 2 * alone[0].usage.prompt_tokens == 2 * len(rendered)
    assert [choice.index for choice in output["sampled"].choices] == [0, 1, 2, 3]
    assert [choice.index for choice in output["fim-list"].choices] == [0, 1]
    assert output["fim-list"].choices[1].text == output["fim-alone"].choices[0].text


def test_a_batch_nobody_polls_completes_with_its_files_and_the_jobs_timestamps(
        server: Server, keys: ApiKeys, store: JobStore, worker: Any, tiny_model: Path) -> None:
    model = model_name(str(tiny_model))
    client = server.client(keys.create("unpolled-user"))
    lines = [completion_line("a", model, prompt="def f():\n"),
             completion_line("b", model, prompt="x", max_tokens=10_000_000)]
    source = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
    # Not read again until it has ended: the server's advancer moves it on, seen here in Redis.
    record = store.keys.record("batch", batch.id)
    job_id = store.client.hget(record, "job_id").decode()
    deadline = time.monotonic() + 240
    while store.client.hget(record, "status") != b"completed":
        assert time.monotonic() < deadline, store.client.hgetall(record)
        time.sleep(0.2)
    job = store.status(job_id)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and job.finished is not None and done.completed_at is not None
    assert done.finalizing_at == int(job.finished)  # the job's end, not the time of a read
    assert 0 <= done.completed_at - int(job.finished) <= 5
    assert [r["custom_id"] for r in file_lines(client, done.output_file_id)] == ["a"]
    assert [r["custom_id"] for r in file_lines(client, done.error_file_id)] == ["b"]
    assert store.client.zscore(store.keys.batches_active, batch.id) is None
