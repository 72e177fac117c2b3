# `make demo` runs the example job end to end; `make test` runs the test suite. Both set up first.
PY := .venv/bin/python
SHARED_TOKENIZER := $(abspath ../shared/models/deepseek-coder-6.7b-instruct)

.PHONY: setup test demo lint typecheck bench-reader bench-throughput test-languages bench-languages

setup:
	scripts/setup

test: setup
	$(PY) -m pytest

demo: setup
	scripts/demo

lint: setup
	.venv/bin/ruff check .

typecheck: setup
	scripts/typecheck

bench-reader: setup
	$(PY) benchmarks/reader.py

# The throughput benchmark on the tiny model (about 25 minutes on 2 CPU cores; docs/benchmarks.md).
bench-throughput: setup
	$(PY) scripts/make_tiny_model.py --tokenizer-dir $(SHARED_TOKENIZER) --out .cache/tiny-deepseek-coder
	$(PY) benchmarks/throughput.py --json benchmarks/results/throughput-cpu.json

# Every supported language's toolchain (WITH_TOOLCHAINS=all), its tests, and the full HumanEval-X check: the 164
# canonical solutions of cpp, go, java, js and python through `eval --samples` (docs/evaluation-languages.md).
test-languages:
	WITH_TOOLCHAINS=all scripts/setup
	$(PY) -m pytest tests/test_languages.py
	$(PY) benchmarks/languages.py --check

bench-languages: setup
	$(PY) benchmarks/languages.py
