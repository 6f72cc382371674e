# The two set-up commands of README: `make demo` and `make test`. Both work on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := dist/demo

.PHONY: demo test test-zoo lint docs bench bench-scaling clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins the tested versions (torch: any other would pull several GB of CUDA).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/edgepack train --model seed-cnn --data digits --epochs 15 --out $(DEMO)/seed-cnn.pt --force
	$(BIN)/edgepack run --model seed-cnn --weights $(DEMO)/seed-cnn.pt --data digits \
		--target x86_64 --out $(DEMO)/seed-cnn --force

# Lint and format are part of the test: a tree that fails either does not pass.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not zoo"

# The torchvision zoo beyond the fast subset in `make test` (about 4 minutes; .ci/run runs it).
test-zoo: $(STAMP)
	$(BIN)/python -m pytest -q -m zoo tests/zoo

# Long benchmarks against peer tools (not part of `make test`); needs ../shared CIFAR-10 or DATA=.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(DATA),--data $(DATA))

# Wall time per stage of `edgepack run` against model size, up to ResNet-50 at 224x224 (long).
bench-scaling: $(STAMP)
	$(BIN)/python bench/scaling.py

lint: $(STAMP)
	$(BIN)/ruff check .

docs: $(STAMP)
	$(BIN)/python -m exporter.docs

clean:
	rm -rf $(VENV) dist build *.egg-info
