"""A corpus of malformed job files: each is refused naming its line, and no job appears in Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from dscbatch.cli.main import main
from dscbatch.core.settings import Settings
from dscbatch.jobs.results import ItemInfo, Output, Usage, result_line
from dscbatch.jobs.store import JobStore

CORPUS = Path(__file__).parent / "data" / "bad"
EXPECTED: dict[str, str] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))


def submit_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings,
                   store: JobStore, path: Path, model: Path) -> str:
    """Run `dscbatch submit` in process; assert exit 2 and that Redis holds no new job; return stderr."""
    monkeypatch.setenv("DSCBATCH_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("DSCBATCH_KEY_PREFIX", "badinput")
    before = set(store.client.keys("badinput:*"))
    with pytest.raises(SystemExit) as caught:
        main(["submit", str(path), "--model", str(model)])
    assert caught.value.code == 2
    assert set(store.client.keys("badinput:*")) == before
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_the_corpus_is_large_enough() -> None:
    assert len(EXPECTED) >= 30
    assert sorted(EXPECTED) == sorted(p.name for p in CORPUS.glob("*.jsonl"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_bad_file_is_refused_naming_the_line(name: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], settings: Settings,
                                                  store: JobStore, deepseek_dir: Path) -> None:
    path = CORPUS / name
    err = submit_refused(monkeypatch, capsys, settings, store, path, deepseek_dir)
    expected = EXPECTED[name]
    where = f"{path}:{expected}" if expected[0].isdigit() else f"{path}: {expected}"
    assert where in err, err


def test_a_10_mb_line_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 settings: Settings, store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "' + "x" * (10 * 1024 * 1024) + '"}\n{"prompt": "after"}\n')
    err = submit_refused(monkeypatch, capsys, settings, store, path, deepseek_dir)
    assert f"{path}:2: line: line is longer than the limit of 8388608 bytes (--max-line-bytes)" in err


def test_fim_for_a_model_without_fim_tokens_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], settings: Settings,
                                                       store: JobStore, tmp_path: Path) -> None:
    model = tmp_path / "no-fim"
    model.mkdir()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens(list(pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.add_special_tokens(["<s>", "</s>"])
    tokenizer.save(str(model / "tokenizer.json"))
    (model / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    path = tmp_path / "fim.jsonl"
    path.write_text('{"prompt": "fine"}\n{"id": "f", "prefix": "a", "suffix": "b"}\n')
    err = submit_refused(monkeypatch, capsys, settings, store, path, model)
    assert f"{path}:2: fim: fim_unsupported: the model's tokenizer has no fill-in-the-middle tokens" in err


def test_prompt_too_long_is_refused_in_strict_mode(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], settings: Settings,
                                                   store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text('{"prompt": "short"}\n' + json.dumps({"prompt": "x = 1\n" * 20000}) + "\n")
    err = submit_refused(monkeypatch, capsys, settings, store, path, deepseek_dir)
    assert f"{path}:2: completion: prompt_too_long: the prompt has" in err


text = st.text(alphabet=st.characters(codec=None), max_size=30)
json_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text


@settings(max_examples=300, deadline=None)
@given(ident=text, kind=text, openai=st.booleans(), metadata=st.none() | st.dictionaries(text, json_scalar),
       outputs=st.lists(st.builds(Output, text, text, st.integers(0, 10**6)), max_size=3),
       error=st.none() | text, prompt=st.none() | text)
def test_result_writer_never_raises_and_writes_one_utf8_json_line(
        ident: str, kind: str, openai: bool, metadata: dict[str, object] | None, outputs: list[Output],
        error: str | None, prompt: str | None) -> None:
    info = ItemInfo(3, ident, kind, openai, metadata, prompt, [1, 2] if prompt is not None else None)
    line = result_line(info, model="m", job_id="j", created=0, outputs=outputs, usage=Usage(1, 2, 0),
                       error_code=error, error_message="why")
    assert "\n" not in line
    line.encode("utf-8")
    record = json.loads(line)
    assert (record["custom_id"] if openai else record["id"]) == ident
