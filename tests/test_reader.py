"""The streaming reader: every problem named FILE:LINE: field: message, and no input crashes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dscbatch.core.errors import InvalidInputError
from dscbatch.jobs.reader import check_file, read_lines, require_valid


def write(tmp_path: Path, data: bytes | str, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def problems(path: Path, **kwargs: int) -> list[str]:
    return [str(p) for line in read_lines(path, **kwargs) for p in line.problems]


def test_all_kinds_with_ids_defaulting_to_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join([
        json.dumps({"prompt": "def f():"}),
        "",
        json.dumps({"id": "fim-1", "prefix": "a", "suffix": "b", "metadata": {"k": [1]}}),
        json.dumps({"type": "chat", "messages": [{"role": "user", "content": "hi"}], "params": {"n": 2}}),
        json.dumps({"files": [{"path": "a.py", "content": "x"}], "target": {"path": "b.py", "prefix": ""}}),
        json.dumps({"custom_id": "oa-1", "method": "POST", "url": "/v1/completions",
                    "body": {"model": "m", "prompt": "p", "suffix": "s", "max_tokens": 5, "stop": "\n"}}),
        json.dumps({"custom_id": "oa-2", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "q"}], "max_completion_tokens": 9}}),
    ]) + "\n")
    lines = list(read_lines(path))
    assert [(line.number, line.id) for line in lines] == [(1, "1"), (3, "fim-1"), (4, "4"), (5, "5"), (6, "oa-1"),
                                                           (7, "oa-2")]
    assert [line.request.type for line in lines if line.request] == ["completion", "fim", "chat", "repo", "fim", "chat"]
    assert [line.openai for line in lines] == [False] * 4 + [True] * 2
    assert lines[1].request is not None and lines[1].request.metadata == {"k": [1]}
    fim = lines[4].request
    assert fim is not None and fim.params.max_tokens == 5 and fim.params.stop == ["\n"]
    chat = lines[5].request
    assert chat is not None and chat.params.max_tokens == 9
    assert check_file(path).requests == 6


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + b'{"prompt": "a"}\r\n{"prompt": "b\\r\\n"}\r\n')
    lines = list(read_lines(path))
    assert [line.request.prompt for line in lines if line.request] == ["a", "b\r\n"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"prompt": "a", "temperature": 1}\n', "in.jsonl:1: temperature: unknown key"),
    (b'{"prompt": "a", "params": {"max_token": 1}}\n', "in.jsonl:1: params.max_token: unknown key"),
    (b'{"prompt": 3}\n', "in.jsonl:1: prompt: Input should be a valid string"),
    (b'{"type": "fim", "prefix": "a"}\n', "in.jsonl:1: suffix: required field is missing"),
    (b'{"type": "poem", "prompt": "a"}\n',
     'in.jsonl:1: type: unknown type "poem": expected one of completion, fim, chat, repo'),
    (b'{"id": "x"}\n', 'in.jsonl:1: type: no field tells which request this is: add "type", one of completion, fim, '
                       'chat, repo'),
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n',
     "in.jsonl:1: messages: the last message must be from the user, not the assistant"),
    (b'{"prompt": "a"\n', "in.jsonl:1: json: invalid JSON: Expecting ',' delimiter (column 15)"),
    (b'["prompt"]\n', "in.jsonl:1: json: a line must be a JSON object, not list"),
    (b'{"prompt": NaN}\n', "in.jsonl:1: json: invalid JSON: NaN is not valid JSON"),
    (b'{"prompt": "\xff"}\n', "in.jsonl:1: encoding: invalid UTF-8 at byte 13: the file must be UTF-8"),
    (b'{"prompt": "a\x00"}\n', "in.jsonl:1: line: NUL byte at byte 14: the file is not JSON Lines text"),
    (b'{"prompt": "a", "params": {"temperature": -1}}\n',
     "in.jsonl:1: params.temperature: Input should be greater than or equal to 0"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\n',
     "in.jsonl:1: url: Input should be '/v1/completions' or '/v1/chat/completions'"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "p", "echo": true}}\n',
     "in.jsonl:1: body.echo: unknown key"),
])
def test_each_problem_names_line_field_and_cause(tmp_path: Path, content: bytes, expected: str) -> None:
    path = write(tmp_path, content)
    assert [p.replace(str(tmp_path) + "/", "") for p in problems(path)] == [expected]


def test_duplicate_ids_name_the_first_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{"id": "a", "prompt": "x"}\n{"prompt": "y"}\n{"id": "a", "prompt": "z"}\n'
                           '{"id": "2", "prompt": "w"}\n')
    assert problems(path) == [f'{path}:3: id: duplicate id "a" (first used on line 1)',
                              f'{path}:4: id: duplicate id "2" (first used on line 2)']


def test_line_over_the_size_limit_is_skipped_whole(tmp_path: Path) -> None:
    path = write(tmp_path, '{"prompt": "' + "x" * 5000 + '"}\n{"prompt": "ok"}\n')
    lines = list(read_lines(path, max_line_bytes=1000))
    assert [str(p) for p in lines[0].problems] == [
        f"{path}:1: line: line is longer than the limit of 1000 bytes (--max-line-bytes)"]
    assert lines[1].number == 2 and lines[1].request is not None


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n", b"\xef\xbb\xbf"])
def test_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(InvalidInputError, match="the file holds no requests"):
        check_file(write(tmp_path, content))


def test_strict_mode_reports_the_first_20_then_a_count(tmp_path: Path) -> None:
    path = write(tmp_path, "{bad\n" * 25 + '{"prompt": "fine"}\n')
    check = check_file(path)
    assert (check.requests, check.invalid_lines) == (1, 25)
    with pytest.raises(InvalidInputError) as caught:
        require_valid(check)
    lines = str(caught.value).splitlines()
    assert len(lines) == 22 and lines[0].startswith(f"{path}:1: json: invalid JSON")
    assert lines[-2:] == ["... and 5 more problems", "25 problems: the file was refused, nothing was submitted "
                          "(--skip-invalid runs the valid lines and reports the others as errors)"]
    assert caught.value.exit_code == 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000))
def test_random_bytes_never_raise(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, data, "fuzz.jsonl")
    for line in read_lines(path, max_line_bytes=500):
        assert (line.request is None) == bool(line.problems)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=10)
keys = st.sampled_from(["id", "type", "prompt", "prefix", "suffix", "messages", "files", "target", "params",
                        "metadata", "custom_id", "method", "url", "body", "role", "content", "path"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=st.lists(st.dictionaries(keys, json_values, max_size=6), min_size=1, max_size=5))
def test_random_json_objects_never_raise(tmp_path: Path, objects: list[dict[str, object]]) -> None:
    path = write(tmp_path, "\n".join(json.dumps(o) for o in objects), "fuzz.jsonl")
    assert len(list(read_lines(path))) == len(objects)


def test_openai_bodies_with_response_format_penalties_and_content_parts(tmp_path: Path) -> None:
    """OpenAI's batch guide line with a ``response_format`` (once refused as an unknown key), curator's
    json_schema, and what cannot be served, refused with its field named."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    guide = {"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": [
                 {"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": [{"type": "text", "text": "Hello world!"}]}],
                 "max_tokens": 1000, "response_format": {"type": "json_object"}}}
    curator = {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "m", "messages": [{"role": "user", "content": "q"}], "frequency_penalty": 0.5,
                        "response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": schema,
                                                                                   "strict": True}}}}
    bad = [{**curator, "custom_id": "b1", "body": {**curator["body"], "stream": True}},  # type: ignore[dict-item]
           {**curator, "custom_id": "b2", "body": {**curator["body"], "response_format": {"type": "json_schema"}}},
           {**curator, "custom_id": "b3", "body": {**curator["body"], "response_format": {"type": "yaml"}}}]
    path = write(tmp_path, "".join(json.dumps(line) + "\n" for line in [guide, curator, *bad]))
    lines = list(read_lines(path))
    first, second = lines[0].request, lines[1].request
    assert first is not None and second is not None and lines[0].model == "gpt-4o-mini"
    assert first.messages[1].content == "Hello world!"  # type: ignore[union-attr]
    assert first.params.response_format is not None and first.params.response_format.type == "json_object"
    fmt = second.params.response_format
    assert fmt is not None and fmt.json_schema is not None and fmt.json_schema.schema_ == schema
    assert second.params.model_dump(exclude_none=True)["response_format"]["json_schema"]["schema"] == schema
    assert second.params.frequency_penalty == 0.5
    assert [str(p).split(": ", 1)[1] for line in lines[2:] for p in line.problems] == [
        "body.stream: Input should be False",
        "body.response_format: json_schema is required with type json_schema, and only then",
        "body.response_format.type: Input should be 'text', 'json_object' or 'json_schema'"]


def openai_completion(custom_id: str, **body: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}) + "\n"


def test_openai_prompt_lists_give_one_request_per_prompt_and_bad_forms_are_named(tmp_path: Path) -> None:
    """OpenAI's four prompt forms (a string, strings, token ids, lists of token ids); FIM's suffix goes with each
    prompt; every request of a line has its custom_id and params."""
    path = write(tmp_path, "".join([
        openai_completion("strings", prompt=["a", "b", "c"], n=2, temperature=0.5),
        openai_completion("ids", prompt=[1, 2, 3]),
        openai_completion("id-lists", prompt=[[1, 2], [3]]),
        openai_completion("fim", prompt=["def f():\n    ", "def g():\n    "], suffix="\n"),
        openai_completion("mixed", prompt=["a", [1, 2]]),
        openai_completion("empty", prompt=[]),
        openai_completion("empty-ids", prompt=[[1], []]),
        openai_completion("negative", prompt=[[1, -2]]),
        openai_completion("ids-with-suffix", prompt=[1, 2], suffix="x"),
    ]))
    lines = list(read_lines(path))
    kinds = [[type(request).__name__ for request in line.requests] for line in lines[:4]]
    assert kinds == [["CompletionRequest"] * 3, ["TokenIdsRequest"], ["TokenIdsRequest"] * 2, ["FimRequest"] * 2]
    strings, ids, id_lists, fim = (line.requests for line in lines[:4])
    assert [r.prompt for r in strings] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert {(r.id, r.params.n, r.params.temperature) for r in strings} == {("strings", 2, 0.5)}
    assert [r.prompt_token_ids for r in ids + id_lists] == [[1, 2, 3], [1, 2], [3]]  # type: ignore[union-attr]
    assert [(r.prefix, r.suffix) for r in fim] == [("def f():\n    ", "\n"), ("def g():\n    ", "\n")]  # type: ignore[union-attr]
    forms = ("must be a string, a list of strings, a list of token ids or a list of lists of token ids (at least "
             "one prompt, each list of token ids with at least one)")
    assert [str(p) for line in lines[4:] for p in line.problems] == [
        f"{path}:5: body.prompt: {forms}", f"{path}:6: body.prompt: {forms}", f"{path}:7: body.prompt: {forms}",
        f"{path}:8: body.prompt: token ids cannot be negative (-2)",
        f"{path}:9: body: suffix (fill-in-the-middle) needs text prompts, not token ids"]
    assert check_file(path).requests == 4
