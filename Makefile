# `make demo` runs the example job end to end; `make test` runs the test suite. Both set up first.
PY := .venv/bin/python
SHARED_TOKENIZER := $(abspath ../shared/models/deepseek-coder-6.7b-instruct)

.PHONY: setup test demo lint typecheck bench-reader

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
