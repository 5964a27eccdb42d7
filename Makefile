# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo lint bench clean

setup:
	@VENV=$(VENV) scripts/setup.sh

# packages whose types mypy checks (the format library and the tools)
TYPED := -p ckptfmt -p ckpt_build -p ckpt_convert -p ckpt_eval

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check shared tools bench tests
	$(PY) -m mypy $(TYPED)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# QFORMAT=fp8|int8_sq|int4_awq: the same pipeline on a checkpoint quantized by ckpt-convert --qformat
demo: setup
	@VENV=$(VENV) QFORMAT=$(QFORMAT) scripts/demo.sh

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check shared tools bench tests
	$(PY) -m mypy shared/ckptfmt

bench: setup
	$(PY) bench/ckptfmt_writer.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
