"""Build a DeepSeek-Coder-like tokenizer where the official one (../shared) is absent.

Usage: ``python scripts/make_fallback_tokenizer.py --out DIR``. A byte-level BPE is trained on this
project's own source text and given DeepSeek Coder's special tokens (same strings, other ids), a
tokenizer config labelled ``LlamaTokenizerFast`` like the official one (so the mislabelled-tokenizer path
is exercised), a chat template in the instruct models' layout, and a Llama config for the tiny model.
Its ids differ from the official tokenizer's; tests that assert literal DeepSeek ids need the official one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOS, EOS, EOT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|EOT|>"
SPECIAL = [BOS, EOS, "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", EOT]
VOCAB_SIZE = 4096
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}You are a programming assistant.\n{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n' }}"
    "{% else %}{{ '### Response:\n' + message['content'] + '\n<|EOT|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    files = sorted(p for pattern in ("**/*.py", "**/*.md") for p in ROOT.glob(pattern)
                   if ".venv" not in p.parts and ".cache" not in p.parts)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def build_fallback_tokenizer(out: Path) -> Path:
    if (out / "tokenizer.json").is_file():
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(), trainer)
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer.save(str(tmp / "tokenizer.json"))
        files = {
            "tokenizer_config.json": {"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True,
                                      "bos_token": BOS, "eos_token": EOT, "pad_token": EOS,
                                      "model_max_length": 16384, "chat_template": CHAT_TEMPLATE},
            "generation_config.json": {"bos_token_id": ids[BOS], "eos_token_id": ids[EOT]},
            "config.json": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                            "vocab_size": tokenizer.get_vocab_size(), "hidden_size": 128, "intermediate_size": 256,
                            "num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 2,
                            "max_position_embeddings": 16384, "rope_theta": 100000, "rms_norm_eps": 1e-6,
                            "bos_token_id": ids[BOS], "eos_token_id": ids[EOT], "tie_word_embeddings": False,
                            "torch_dtype": "float32"},
        }
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True)
    print(build_fallback_tokenizer(parser.parse_args().out))


if __name__ == "__main__":
    main()
