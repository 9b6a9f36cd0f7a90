# One command to set up and run the embedded default, one to set up and run the tests.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 + torchvision 0.29.1 are the pair that import together here (see ../shared/REFERENCE.md section 7)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

SAMPLE := data/sample
TINY := configs/tiny/llava_dora.yaml

.PHONY: install demo test bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

$(SAMPLE)/README.txt: $(wildcard mmft/tools/sample_data/*.py)
	$(VENV)/bin/mmft sample-data --out $(SAMPLE)

# the main job: DoRA visual instruction tuning of the tiny LLaVA on the sample data, then its test metrics
demo: install $(SAMPLE)/README.txt
	$(VENV)/bin/mmft fit --config $(TINY)
	$(VENV)/bin/mmft test --ckpt_path runs/tiny_llava_dora/checkpoints/last.ckpt

# one pytest worker per core, a test file per worker at a time (files share their expensive fixtures)
test: install
	$(PY) -m pytest -q -n auto --dist loadfile

bench: install
	$(PY) scripts/bench_adapters.py
