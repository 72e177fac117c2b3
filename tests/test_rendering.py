"""Token-exact rendering against the real DeepSeek Coder tokenizer (the product's correctness core)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from dscbatch.core.errors import RequestError
from dscbatch.jobs.reader import parse_line
from dscbatch.jobs.rendering import Renderer
from dscbatch.jobs.requests import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    FimRequest,
    Params,
    RepoFile,
    RepoRequest,
    RepoTarget,
    TokenIdsRequest,
)
from dscbatch.jobs.tokenizer import ModelTokenizer

from .conftest import OFFICIAL

BOS, EOS_BASE, FIM_HOLE, FIM_BEGIN, FIM_END, EOT = 32013, 32014, 32015, 32016, 32017, 32021
DEFAULT_SYSTEM = ("You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek "
                  "Company, and you only answer questions related to computer science. For politically sensitive "
                  "questions, security and privacy issues, and other non-computer science questions, you will "
                  "refuse to answer\n")
official = pytest.mark.skipif(not OFFICIAL, reason="literal DeepSeek ids need the official tokenizer")


@pytest.fixture(scope="module")
def tokenizer(deepseek_dir: Path) -> ModelTokenizer:
    return ModelTokenizer(deepseek_dir)


@pytest.fixture(scope="module")
def reference(deepseek_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(deepseek_dir / "tokenizer.json"))


def ref_ids(reference: Tokenizer, text: str) -> list[int]:
    return list(reference.encode(text, add_special_tokens=False).ids)


@official
def test_completion_ids_are_the_official_ones(tokenizer: ModelTokenizer) -> None:
    rendered = Renderer(tokenizer).render(CompletionRequest(id="a", prompt="def f():"))
    assert rendered.prompt_token_ids == [BOS, 1551, 267, 10942]
    assert rendered.prompt == "<｜begin▁of▁sentence｜>def f():"
    assert rendered.stop_token_ids == [EOT]


@official
def test_fim_uses_deepseek_tokens_and_one_bos(tokenizer: ModelTokenizer, reference: Tokenizer) -> None:
    request = FimRequest(id="a", prefix="def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))")
    rendered = Renderer(tokenizer).render(request)
    ids = rendered.prompt_token_ids
    assert ids[:2] == [BOS, FIM_BEGIN] and ids[-1] == FIM_END and ids.count(FIM_HOLE) == 1 and ids.count(BOS) == 1
    hole = ids.index(FIM_HOLE)
    assert ids[2:hole] == ref_ids(reference, "def add(a, b):\n    ")
    assert ids[hole + 1:-1] == ref_ids(reference, "\n\nprint(add(1, 2))")


@official
def test_fim_with_empty_prefix_and_suffix(tokenizer: ModelTokenizer) -> None:
    rendered = Renderer(tokenizer).render(FimRequest(id="a", prefix="", suffix=""))
    assert rendered.prompt_token_ids == [BOS, FIM_BEGIN, FIM_HOLE, FIM_END]


@official
def test_chat_default_system_prompt(tokenizer: ModelTokenizer, reference: Tokenizer) -> None:
    request = ChatRequest(id="c", messages=[ChatMessage(role="user", content="Write quicksort in Python.")])
    rendered = Renderer(tokenizer).render(request)
    text = DEFAULT_SYSTEM + "### Instruction:\nWrite quicksort in Python.\n### Response:\n"
    assert rendered.prompt == "<｜begin▁of▁sentence｜>" + text
    assert rendered.prompt_token_ids == [BOS, *ref_ids(reference, text)]
    assert rendered.prompt_token_ids.count(BOS) == 1


@official
def test_chat_custom_system_prompt_and_several_turns(tokenizer: ModelTokenizer, reference: Tokenizer) -> None:
    messages = [ChatMessage(role="system", content="Answer in Rust."), ChatMessage(role="user", content="hi"),
                ChatMessage(role="assistant", content="fn main() {}"), ChatMessage(role="user", content="more")]
    rendered = Renderer(tokenizer).render(ChatRequest(id="c", messages=messages))
    # The official template writes a custom system prompt without a newline after it.
    text = ("Answer in Rust.### Instruction:\nhi\n### Response:\nfn main() {}\n<|EOT|>\n"
            "### Instruction:\nmore\n### Response:\n")
    assert rendered.prompt_token_ids == [BOS, *ref_ids(reference, text)]
    assert rendered.prompt_token_ids.count(EOT) == 1
    assert DEFAULT_SYSTEM.strip() not in rendered.prompt


def test_chat_matches_transformers_rendering_of_the_same_template(tokenizer: ModelTokenizer,
                                                                  deepseek_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(deepseek_dir / "tokenizer.json"),
                                 bos_token=tokenizer.bos_text, eos_token="<|EOT|>")
    assert tokenizer.chat_template is not None
    hf.chat_template = tokenizer.chat_template.source
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}]
    request = ChatRequest(id="c", messages=[ChatMessage.model_validate(m) for m in messages])
    assert Renderer(tokenizer).render(request).prompt == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


@official
def test_repo_files_come_after_what_they_import(tokenizer: ModelTokenizer, reference: Tokenizer) -> None:
    request = RepoRequest(id="r", files=[
        RepoFile(path="main.py", content="from utils import load\nfrom model import Net\n"),
        RepoFile(path="model.py", content="import torch\nfrom utils import load\nclass Net: ...\n"),
        RepoFile(path="utils.py", content="def load(): ...\n"),
        RepoFile(path="README.md", content="# demo"),
    ], target=RepoTarget(path="train.py", prefix="from main import *\n"))
    rendered = Renderer(tokenizer).render(request)
    text = ("# utils.py\ndef load(): ...\n# model.py\nimport torch\nfrom utils import load\nclass Net: ...\n"
            "# main.py\nfrom utils import load\nfrom model import Net\n# README.md\n# demo\n"
            "# train.py\nfrom main import *\n")
    assert rendered.prompt_token_ids == [BOS, *ref_ids(reference, text)]


@official
def test_repo_target_with_suffix_is_fim_inside_the_target(tokenizer: ModelTokenizer) -> None:
    request = RepoRequest(id="r", files=[RepoFile(path="a.py", content="X = 1\n")],
                          target=RepoTarget(path="b.py", prefix="from a import X\n", suffix="\nprint(Y)\n"))
    rendered = Renderer(tokenizer).render(request)
    assert rendered.prompt.startswith("<｜begin▁of▁sentence｜><｜fim▁begin｜># a.py\nX = 1\n# b.py\nfrom a import X\n")
    assert rendered.prompt_token_ids[:2] == [BOS, FIM_BEGIN] and rendered.prompt_token_ids[-1] == FIM_END


@pytest.mark.parametrize("text", [
    "def f(x):\n\tif x:\n        return 'é✓ 日本語'\n",
    "  leading and trailing spaces  \r\n\n\n",
    "#include <stdio.h>\nint main(){printf(\"%d\\n\", 1<<3);}\n",
    "emoji 🐍 and combining é",
])
def test_decoding_round_trips_code(tokenizer: ModelTokenizer, text: str) -> None:
    ids = Renderer(tokenizer).render(CompletionRequest(id="a", prompt=text)).prompt_token_ids
    assert tokenizer.decode(ids) == text
    assert ids.count(tokenizer.bos_id) == 1


def test_prompt_too_long_names_both_numbers(tokenizer: ModelTokenizer) -> None:
    renderer = Renderer(tokenizer, Params(max_tokens=100), max_model_len=64)
    with pytest.raises(RequestError) as caught:
        renderer.render(CompletionRequest(id="a", prompt="x = 1\n" * 20))
    assert caught.value.code == "prompt_too_long"
    prompt_tokens = len(tokenizer.encode("x = 1\n" * 20)) + 1
    assert f"the prompt has {prompt_tokens} tokens and max_tokens is 100" in caught.value.message
    assert "context of 64 tokens" in caught.value.message


def test_line_params_override_job_defaults_which_override_dscbatch_defaults(tokenizer: ModelTokenizer) -> None:
    renderer = Renderer(tokenizer, Params(max_tokens=7, temperature=0.5))
    rendered = renderer.render(CompletionRequest(id="a", prompt="x", params=Params(temperature=0.0, seed=3)))
    assert (rendered.params.max_tokens, rendered.params.temperature, rendered.params.seed) == (7, 0.0, 3)
    assert rendered.params.top_p == 1.0 and rendered.params.n == 1


@official
def test_base_model_stops_on_end_of_sentence(tokenizer: ModelTokenizer, deepseek_dir: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "config.json"):
        shutil.copyfile(deepseek_dir / name, tmp_path / name)
    config = json.loads((deepseek_dir / "tokenizer_config.json").read_text())
    config["eos_token"] = "<｜end▁of▁sentence｜>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": BOS, "eos_token_id": EOS_BASE}))
    assert ModelTokenizer(tmp_path).stop_token_ids == [EOS_BASE]


def _tokenizer_with(tmp_path: Path, special: list[str], config: dict[str, object]) -> ModelTokenizer:
    """A small byte-level tokenizer carrying one family's special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens(list(pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.add_special_tokens(special)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return ModelTokenizer(tmp_path)


@pytest.mark.parametrize(("special", "family", "prompt"), [
    (["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>"], "starcoder",
     "<fim_prefix>P<fim_suffix>S<fim_middle>"),
    (["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"], "qwen2.5-coder",
     "<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>"),
    (["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>"], "codegemma",
     "<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>"),
    (["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"], "codellama", "<PRE> P <SUF>S <MID>"),
])
def test_fim_format_follows_the_model_family(tmp_path: Path, special: list[str], family: str, prompt: str) -> None:
    renderer = Renderer(_tokenizer_with(tmp_path, special, {}))
    assert renderer.fim is not None and renderer.fim.family == family
    assert renderer.render(FimRequest(id="a", prefix="P", suffix="S")).prompt == prompt


def test_model_without_fim_tokens_gets_a_per_line_error(tmp_path: Path) -> None:
    renderer = Renderer(_tokenizer_with(tmp_path, ["<s>", "</s>"], {"bos_token": "<s>", "add_bos_token": True}))
    with pytest.raises(RequestError) as caught:
        renderer.render(FimRequest(id="a", prefix="P", suffix="S"))
    assert caught.value.code == "fim_unsupported"
    assert renderer.render(CompletionRequest(id="b", prompt="ok")).prompt == "<s>ok"


def test_batch_rendering_gives_each_request_the_ids_of_rendering_it_alone(tokenizer: ModelTokenizer) -> None:
    renderer = Renderer(tokenizer, Params(max_tokens=8), max_model_len=128)
    requests = [
        CompletionRequest(id="c", prompt="def f():\n    return 1\n"),
        FimRequest(id="f", prefix="def g():\n    ", suffix="\n"),
        CompletionRequest(id="long", prompt="x = 1\n" * 40),  # over the 128-token context
        ChatRequest(id="chat", messages=[ChatMessage(role="user", content="Sort a list.")]),
        CompletionRequest(id="empty", prompt=""),
    ]
    batched = renderer.render_many(requests)
    for request, rendered in zip(requests, batched, strict=True):
        try:
            alone: object = renderer.render(request)
        except RequestError as error:
            alone = error
        if isinstance(alone, RequestError):
            assert isinstance(rendered, RequestError) and (rendered.code, rendered.message) == (alone.code,
                                                                                                alone.message)
        else:
            assert rendered == alone
    assert [isinstance(r, RequestError) for r in batched] == [False, False, True, False, False]


def test_a_prompt_list_renders_each_prompt_as_alone_and_token_ids_run_as_given(tokenizer: ModelTokenizer,
                                                                               reference: Tokenizer) -> None:
    """An OpenAI completions line with a list of prompts (FIM's suffix with each); token id prompts keep their
    ids exactly (no BOS added, as vLLM's OpenAI server runs them); an id outside the vocabulary is refused."""
    renderer = Renderer(tokenizer)
    body = {"prompt": ["def f():\n", "x = 1\n"], "suffix": "\nprint(f())\n", "max_tokens": 8}
    fim = parse_line(1, json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": body}))
    rendered = renderer.render_many(fim.requests)
    assert rendered == [renderer.render(FimRequest(id="a", prefix=prefix, suffix="\nprint(f())\n",
                                                   params=Params(max_tokens=8))) for prefix in body["prompt"]]
    assert [r.prompt_token_ids for r in rendered] == [  # type: ignore[union-attr]
        [BOS, FIM_BEGIN, *ref_ids(reference, prefix), FIM_HOLE, *ref_ids(reference, "\nprint(f())\n"), FIM_END]
        for prefix in body["prompt"]]
    ids = ref_ids(reference, "def f():\n")
    tokens = parse_line(1, json.dumps({"custom_id": "t", "method": "POST", "url": "/v1/completions",
                                       "body": {"prompt": [ids, [BOS, *ids], [32013, 99999]]}}))
    plain, with_bos, outside = renderer.render_many(tokens.requests)
    assert not isinstance(plain, RequestError) and not isinstance(with_bos, RequestError)
    assert plain.prompt_token_ids == ids and plain.prompt == "def f():\n"
    assert with_bos.prompt_token_ids == [BOS, *ids] == renderer.render(CompletionRequest(
        id="t", prompt="def f():\n")).prompt_token_ids
    assert isinstance(outside, RequestError) and (outside.code, outside.message) == (
        "invalid_request", f"prompt token id 99999 is outside the model's vocabulary of {renderer.vocab_size} tokens")
    assert renderer.render(TokenIdsRequest(id="t", prompt_token_ids=ids)) == plain
