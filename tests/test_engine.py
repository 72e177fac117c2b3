"""The vLLM engine wrapper on a tiny random-weight model, and the faithful tokenizer directory it relies on."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from dscbatch.core.errors import EngineError
from dscbatch.jobs.hf_tokenizer import faithful_tokenizer_dir, is_mislabelled
from dscbatch.jobs.requests import Params
from dscbatch.workers.batching import EngineLoop, default_shards_in_flight
from dscbatch.workers.engine import Engine, EngineRequest

from .conftest import OFFICIAL, TOKENIZER_DIR

# Ids come from the tokenizer under test (the official one, or the fallback where it is absent).
REFERENCE = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
BOS, EOT, FIM_BEGIN = (REFERENCE.token_to_id(t) for t in ("<｜begin▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>"))
PROMPT = [BOS, *REFERENCE.encode("def f():", add_special_tokens=False).ids]
GREEDY = Params(max_tokens=12, temperature=0.0, ignore_eos=True)

pytestmark = [
    # vLLM's import of torch._inductor, on Python < 3.14.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    # vLLM 0.32's LLM never terminates its zmq context; it is collected when the engine's output thread ends.
    pytest.mark.filterwarnings("ignore:Unclosed context:ResourceWarning"),
]


@pytest.fixture(scope="module")
def reference() -> Tokenizer:
    """The ids every path must reproduce: the tokenizers library on the original tokenizer.json."""
    return REFERENCE


@pytest.fixture(scope="module")
def fixed_dir(deepseek_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return faithful_tokenizer_dir(deepseek_dir, tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def engine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with pytest.MonkeyPatch.context() as patch:
        # The corrected tokenizer goes to a temporary cache, not the user's.
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        started = Engine(str(tiny_model), {"max_model_len": 1024})
    yield started
    started.close()
    # Let the leaked zmq context go now, inside this module's warning filters, not during a later test.
    for thread in threading.enumerate():
        if thread.name == "EngineCoreOutputQueueThread":
            thread.join(timeout=10)
    gc.collect()


# -- the faithful tokenizer directory (fast) ------------------------------------------------------------------


def test_the_official_tokenizer_is_mislabelled_and_the_copy_is_not(deepseek_dir: Path, fixed_dir: Path) -> None:
    assert is_mislabelled(deepseek_dir)
    assert fixed_dir != deepseek_dir
    assert not is_mislabelled(fixed_dir)
    assert faithful_tokenizer_dir(fixed_dir) == fixed_dir


def test_the_corrected_copy_is_written_once(deepseek_dir: Path, fixed_dir: Path) -> None:
    assert faithful_tokenizer_dir(deepseek_dir, fixed_dir.parent) == fixed_dir
    assert [p.name for p in fixed_dir.parent.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_auto_tokenizer_encodes_like_the_tokenizers_library(fixed_dir: Path, reference: Tokenizer) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fixed_dir)
    assert tokenizer.encode("def f():") == PROMPT
    if OFFICIAL:
        assert PROMPT == [32013, 1551, 267, 10942] and (EOT, FIM_BEGIN) == (32021, 32016)
    texts = ["\tif x:\n    return 'é✓'\n", "<｜fim▁begin｜>a<｜fim▁hole｜>b<｜fim▁end｜>", "x<|EOT|>", "  中文 𝔘\r\n"]
    for text in texts:
        ids = tokenizer.encode(text)
        assert ids == [BOS, *reference.encode(text, add_special_tokens=False).ids]
        assert tokenizer.decode(ids[1:]) == text == reference.decode(ids[1:], skip_special_tokens=False)
    assert tokenizer.convert_tokens_to_ids(["<|EOT|>", "<｜fim▁begin｜>"]) == [EOT, FIM_BEGIN]
    assert tokenizer.decode([FIM_BEGIN, EOT]) == "<｜fim▁begin｜><|EOT|>"
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS, EOT)


def test_unknown_engine_arguments_are_refused_before_starting(tiny_model: Path) -> None:
    with pytest.raises(EngineError, match="'max_modle_len'"):
        Engine(str(tiny_model), {"max_modle_len": 512})


# -- the engine -----------------------------------------------------------------------------------------------


def _request(key: str, ids: list[int], params: Params = GREEDY, stop_ids: list[int] | None = None) -> EngineRequest:
    return EngineRequest(key, ids, params, stop_ids or [])


@pytest.mark.engine
def test_greedy_output_is_deterministic_and_decodes_like_the_tokenizers_library(engine: Engine,
                                                                               reference: Tokenizer) -> None:
    first, second = (engine.generate([_request("a", PROMPT)])[0] for _ in range(2))
    assert first.error is None and first.key == "a"
    assert first.outputs == second.outputs
    (completion,) = first.outputs
    assert completion.finish_reason == "length"
    assert len(completion.token_ids) == 12  # max_tokens, the eos ignored
    assert completion.text == reference.decode(completion.token_ids)
    assert first.prompt_tokens == len(PROMPT)


@pytest.mark.engine
def test_sampled_text_decodes_like_the_tokenizers_library(engine: Engine, reference: Tokenizer) -> None:
    params = Params(max_tokens=40, temperature=1.0, seed=7, ignore_eos=True, n=2)
    results = engine.generate([_request(str(i), [BOS, 100 + i], params) for i in range(6)])
    assert [r.key for r in results] == [str(i) for i in range(6)]
    for result in results:
        assert len(result.outputs) == 2
        for completion in result.outputs:
            assert len(completion.token_ids) == 40
            assert completion.text == reference.decode(completion.token_ids)


@pytest.mark.engine
def test_stop_tokens_and_stop_strings_end_the_text(engine: Engine, reference: Tokenizer) -> None:
    (plain,) = engine.generate([_request("plain", PROMPT)])[0].outputs
    stop_id = plain.token_ids[2]
    # The model's stop tokens end the text unless ignore_eos asks to ignore them.
    stopping = GREEDY.model_copy(update={"ignore_eos": False})
    (by_token,) = engine.generate([_request("t", PROMPT, stopping, stop_ids=[stop_id])])[0].outputs
    (ignored,) = engine.generate([_request("i", PROMPT, stop_ids=[stop_id])])[0].outputs
    assert ignored.token_ids == plain.token_ids
    assert by_token.finish_reason == "stop"
    assert by_token.token_ids == plain.token_ids[:3]
    assert by_token.text == reference.decode(plain.token_ids[:2])
    stop_text = plain.text[len(reference.decode(plain.token_ids[:3])):][:3]
    assert len(stop_text) == 3
    params = GREEDY.model_copy(update={"stop": [stop_text]})
    (by_string,) = engine.generate([_request("s", PROMPT, params)])[0].outputs
    assert by_string.finish_reason == "stop"
    assert by_string.text == plain.text[:plain.text.index(stop_text)]


@pytest.mark.engine
def test_a_bad_request_fails_alone(engine: Engine) -> None:
    results = engine.generate([
        _request("ok1", PROMPT),
        _request("too_long", [BOS] * 2000),
        _request("out_of_vocab", [BOS, 40000]),
        _request("empty", []),
        _request("ok2", [BOS, 5, 6]),
    ])
    assert [r.key for r in results] == ["ok1", "too_long", "out_of_vocab", "empty", "ok2"]
    assert [r.error.code if r.error else None for r in results] == [
        None, "prompt_too_long", "invalid_request", "invalid_request", None]
    assert all(len(r.outputs[0].token_ids) == 12 for r in (results[0], results[4]))


@pytest.mark.engine
def test_a_request_vllm_refuses_fails_alone(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.exceptions import VLLMValidationError

    real_add = engine.llm.llm_engine.add_request

    def picky_add(request_id: str, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        if 777 in prompt["prompt_token_ids"]:
            raise VLLMValidationError("token 777 refused")
        return real_add(request_id, prompt, *args, **kwargs)

    monkeypatch.setattr(engine.llm.llm_engine, "add_request", picky_add)
    results = engine.generate([_request("a", PROMPT), _request("bad", [BOS, 777]), _request("b", [BOS, 5])])
    assert [r.error.code if r.error else None for r in results] == [None, "invalid_request", None]
    assert results[1].error is not None and "token 777 refused" in results[1].error.message
    assert results[0].outputs == engine.generate([_request("a", PROMPT)])[0].outputs


@pytest.mark.engine
def test_results_stream_as_they_finish_and_closing_aborts_the_rest(engine: Engine) -> None:
    short, long = GREEDY.model_copy(update={"max_tokens": 2}), GREEDY.model_copy(update={"max_tokens": 200})
    stream = engine.stream([_request("long", PROMPT, long), _request("short", PROMPT, short)])
    assert next(stream).key == "short"
    stream.close()
    assert not engine.llm.llm_engine.has_unfinished_requests()


@pytest.mark.engine
def test_a_repeated_long_prompt_hits_the_prefix_cache(engine: Engine) -> None:
    # The CPU backend caches whole blocks of 128 tokens: a 300-token prompt can reuse two.
    prompt = [BOS, *range(2000, 2299)]
    params = GREEDY.model_copy(update={"max_tokens": 2})
    (first,) = engine.generate([_request("1", prompt, params)])
    (second,) = engine.generate([_request("2", prompt, params)])
    assert first.prompt_tokens == second.prompt_tokens == 300
    assert first.cached_prompt_tokens == 0
    assert second.cached_prompt_tokens >= 128


@pytest.fixture
def loop(engine: Engine) -> Iterator[EngineLoop]:
    started = EngineLoop(engine)
    started.start()
    yield started
    started.stop()


def _never() -> bool:
    return False


@pytest.mark.engine
def test_a_later_shard_joins_the_batch_while_an_earlier_ones_tail_runs(loop: EngineLoop) -> None:
    short, long = GREEDY.model_copy(update={"max_tokens": 2}), GREEDY.model_copy(update={"max_tokens": 400})
    first = loop.stream([_request("tail", PROMPT, long), _request("a", PROMPT, short)], _never)
    assert next(first).key == "a"  # the first shard is down to its long tail
    second = loop.stream([_request("b", PROMPT, short)], _never)
    assert next(second).key == "b"  # served at once, not after the tail
    assert list(second) == []
    assert [result.key for result in first] == ["tail"]


@pytest.mark.engine
def test_a_stream_alone_holds_other_streams_back(loop: EngineLoop) -> None:
    params = GREEDY.model_copy(update={"max_tokens": 40})
    order: list[str] = []

    def other_shard() -> None:
        order.extend(result.key for result in loop.stream([_request("other", PROMPT, params)], _never))

    with loop.alone():
        thread = threading.Thread(target=other_shard)
        thread.start()
        order.extend(result.key for result in loop.stream([_request("alone", PROMPT, params)], _never))
    thread.join(timeout=60)
    assert order == ["alone", "other"]


@pytest.mark.engine
def test_a_stream_waiting_to_run_alone_goes_before_shards_that_come_later(loop: EngineLoop) -> None:
    long, short = GREEDY.model_copy(update={"max_tokens": 60}), GREEDY.model_copy(update={"max_tokens": 2})
    order: list[str] = []

    def run(key: str, params: Params, alone: bool = False) -> threading.Thread:
        def body() -> None:
            with loop.alone() if alone else contextlib.nullcontext():
                order.extend(result.key for result in loop.stream([_request(key, PROMPT, params)], _never))
        thread = threading.Thread(target=body)
        thread.start()
        return thread

    def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    threads = [run("running", long)]
    until(lambda: loop._streams == 1)
    threads.append(run("alone", short, alone=True))
    until(lambda: loop._alone is not None)  # it waits for "running" to end, and holds newcomers back
    threads.append(run("later", short))
    for thread in threads:
        thread.join(timeout=60)
    assert order == ["running", "alone", "later"]


@pytest.mark.engine
def test_stopping_a_stream_aborts_its_requests(loop: EngineLoop, engine: Engine) -> None:
    stop = threading.Event()
    stream = loop.stream([_request("long", PROMPT, GREEDY.model_copy(update={"max_tokens": 500}))], stop.is_set)
    stop.set()
    assert list(stream) == []
    deadline = time.monotonic() + 10
    while engine.llm.llm_engine.has_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.llm.llm_engine.has_unfinished_requests()


@pytest.mark.engine
def test_a_shard_waits_for_room_in_the_engines_batch(loop: EngineLoop, engine: Engine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "max_num_seqs", 2)  # a batch of two requests is full
    long, short = GREEDY.model_copy(update={"max_tokens": 100}), GREEDY.model_copy(update={"max_tokens": 2})
    order: list[str] = []

    def shard(*requests: EngineRequest) -> threading.Thread:
        thread = threading.Thread(target=lambda: order.extend(r.key for r in loop.stream(list(requests), _never)))
        thread.start()
        return thread

    first = shard(_request("long-1", PROMPT, long), _request("long-2", PROMPT, long))
    deadline = time.monotonic() + 10
    while loop._in_engine < 2:  # the first shard is in the engine
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = shard(_request("short", PROMPT, short))
    for thread in (first, second):
        thread.join(timeout=60)
    # The short request waited for room: it would otherwise have finished long before the long ones.
    assert order[2] == "short" and sorted(order[:2]) == ["long-1", "long-2"]


def test_a_worker_holds_enough_shards_for_two_full_batches() -> None:
    assert default_shards_in_flight(max_num_seqs=256, shard_max_requests=256) == 3
    assert default_shards_in_flight(max_num_seqs=256, shard_max_requests=64) == 9
    assert default_shards_in_flight(max_num_seqs=1024, shard_max_requests=16) == 16  # the most it holds
    assert default_shards_in_flight(max_num_seqs=8, shard_max_requests=256) == 2
