"""Build a tiny random-weight Llama model that uses a real model's tokenizer, for tests on the CPU.

Usage: ``python scripts/make_tiny_model.py --tokenizer-dir DIR --out OUT``. The weights come from a fixed
seed, so two builds are identical; a complete OUT is left as it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

# Copied as they are; config.json is written anew from the shrunk config.
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json")
WEIGHTS_FILE = "model.safetensors"
SEED = 1234
# vLLM's CPU attention needs head_dim 64; the rest is as small as vLLM accepts.
TINY_SIZES = {
    "hidden_size": 128,
    "num_attention_heads": 2,
    "head_dim": 64,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
}


def is_complete(out: Path) -> bool:
    """Whether ``out`` already holds a built model (the weights are written last)."""
    return (out / WEIGHTS_FILE).is_file() and (out / "config.json").is_file() and (out / "tokenizer.json").is_file()


def build_tiny_model(tokenizer_dir: Path, out: Path) -> Path:
    """Build the tiny model from ``tokenizer_dir``'s config and tokenizer into ``out``; returns ``out``."""
    if is_complete(out):
        return out
    # Imported here so that `--help` and the idempotent path stay fast.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tokenizer_dir)
    for name, value in TINY_SIZES.items():
        setattr(config, name, value)
    # bf16 like the real checkpoints: vLLM's "auto" dtype downcasts fp32 weights to bf16 on the CPU anyway.
    config.dtype = torch.bfloat16
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).bfloat16().eval()  # type: ignore[no-untyped-call]

    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside OUT, then rename: a concurrent or interrupted build never leaves a half-written OUT.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in COPIED_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, tmp / name)
                os.chmod(tmp / name, 0o644)  # the shared originals are read-only
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out.exists() and not is_complete(out):
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:
            if not is_complete(out):  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokenizer-dir", type=Path, required=True, help="model dir with config.json and tokenizer")
    parser.add_argument("--out", type=Path, required=True, help="where to write the tiny model")
    args = parser.parse_args(argv)
    print(build_tiny_model(args.tokenizer_dir, args.out))


if __name__ == "__main__":
    main()
