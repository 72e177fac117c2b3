"""Stop ids per model family: generation_config's EOS list, the chat template's end of turn, the FIM end tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from dscbatch.jobs.rendering import Renderer, chat_end_token, detect_fim_format
from dscbatch.jobs.requests import ChatMessage, ChatRequest, FimRequest
from dscbatch.jobs.tokenizer import ModelTokenizer

from .conftest import OFFICIAL, REAL_MODEL, REAL_MODEL_ABSENT
from .test_rendering import _tokenizer_with


def _ids(tokenizer: ModelTokenizer, *texts: str) -> list[int]:
    return sorted(tokenizer.vocab[text] for text in texts)


def test_deepseek_stops_at_its_chat_end_and_at_the_end_of_a_fim_answer(deepseek_dir: Path) -> None:
    tokenizer = ModelTokenizer(deepseek_dir)
    renderer = Renderer(tokenizer)
    assert chat_end_token(tokenizer) == "<|EOT|>"
    expected = _ids(tokenizer, "<|EOT|>", "<｜end▁of▁sentence｜>")
    if OFFICIAL:
        assert expected == [32014, 32021]
    for request in (FimRequest(id="f", prefix="a", suffix="b"),
                    ChatRequest(id="c", messages=[ChatMessage(role="user", content="hi")])):
        assert renderer.render(request).stop_token_ids == expected


@pytest.mark.skipif(not (REAL_MODEL / "tokenizer.json").is_file(), reason=REAL_MODEL_ABSENT)
def test_qwen_stops_at_im_end_endoftext_and_its_fim_padding_and_file_separator() -> None:
    tokenizer = ModelTokenizer(REAL_MODEL)
    fim = detect_fim_format(tokenizer)
    assert fim is not None and fim.family == "qwen2.5-coder"
    assert chat_end_token(tokenizer) == "<|im_end|>"
    # generation_config.json lists both EOS tokens (the GGUF's conversion wrote only <|im_end|>).
    assert tokenizer.stop_token_ids == [151643, 151645]
    rendered = Renderer(tokenizer).render(FimRequest(id="f", prefix="def add(a, b):\n    ", suffix="\n"))
    assert rendered.prompt_token_ids[0] == 151659 and rendered.prompt_token_ids[-1] == 151660
    assert rendered.stop_token_ids == [151643, 151645, 151662, 151664] == _ids(
        tokenizer, "<|endoftext|>", "<|im_end|>", "<|fim_pad|>", "<|file_sep|>")


@pytest.mark.parametrize(("family", "special", "eos", "ends"), [
    ("starcoder", ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<|endoftext|>"], "<|endoftext|>",
     ["<file_sep>", "<|endoftext|>"]),
    ("codegemma", ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>", "<eos>"], "<eos>",
     ["<|file_separator|>", "<eos>"]),
    ("codellama", ["</s>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"], "</s>", ["</s>", "▁<EOT>"]),
])
def test_each_fim_family_stops_at_its_end_tokens(tmp_path: Path, family: str, special: list[str], eos: str,
                                                 ends: list[str]) -> None:
    tokenizer = _tokenizer_with(tmp_path, special, {"eos_token": eos})
    renderer = Renderer(tokenizer)
    assert renderer.fim is not None and renderer.fim.family == family
    assert renderer.render(FimRequest(id="f", prefix="P", suffix="S")).stop_token_ids == _ids(tokenizer, *ends)
