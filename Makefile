# The two commands of the README:
#   make sample   install into .venv, then text -> 64 -> 256 -> 1024 px with the shipped cascade
#   make test     install into .venv, then run every test (pytest for tests/, nbval for lessons/)
#   make lessons  install into .venv (with JupyterLab), then open the lessons in JupyterLab
#
# TORCH is installed before the package. The default is the CPU wheel; a GPU user installs the CUDA
# build of torch that matches their driver into .venv first and runs `make test TORCH=` (skip the pin).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LESSONS_STAMP := $(VENV)/.installed-lessons

.PHONY: install sample test lessons bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/pip install --quiet $(TORCH))
	$(BIN)/pip install --quiet -e ".[dev,openmoji]"
	touch $(STAMP)

sample: $(STAMP)
	$(BIN)/minimagen sample "a small red striped circle on the left" --out out/sample.png --all-stages

test: $(STAMP)
	$(BIN)/python -m pytest

$(LESSONS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,openmoji,lessons]"
	touch $(LESSONS_STAMP)

lessons: $(LESSONS_STAMP)
	$(BIN)/jupyter lab lessons/ $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	$(BIN)/python bench/bench_data.py
	$(BIN)/python bench/bench_unet.py
	$(BIN)/python bench/bench_sampling.py
	$(BIN)/python bench/bench_cascade.py
	$(BIN)/python bench/bench_cascade.py --precision bf16
	$(BIN)/python bench/bench_train_paths.py

clean:
	rm -rf $(VENV) out
