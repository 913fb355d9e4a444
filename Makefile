# make setup   - virtual environment with the versions of requirements.lock (torch from TORCH_SPEC: docs/ENVIRONMENT.md)
# make lock    - resolve requirements.lock afresh from pyproject.toml (in a temporary virtual environment)
# make run     - the main job: SmolLM2-135M (PyPI), IsA and fruit through robustness and the report, ~30 min on 2 cores
# make run-tiny - the whole pipeline for params.yaml (the tiny preset, the test preset)
# make test    - the test suite, on both cores (make test-fast: every module's fast tests)
# make lint    - ruff format --check and ruff check (pyproject.toml's [tool.ruff]; tests/workflow/test_style.py)
# make demo    - the demo preset (SmolLM2-135M from PyPI): every demo target and the short CSQA run
# make params   - write params.yaml = config/base.yaml + config/mirror-local.yaml [+ config/presets/$(PRESET).yaml]
#                  [+ config/overlays/$(OVERLAY).yaml ...]
#                 [+ SET="train.steps=10 run.seeds=[0]"], then dvc.yaml for it
# make params-files - regenerate config/base.yaml and config/params.schema.yaml from src/knowsubnet/core/sections.py
# make dvc.yaml - regenerate dvc.yaml from the Snakemake rules (after editing rules or `run` in params.yaml)
# make dvc-repro, make bench

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CORES ?= 2
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels on a CPU machine. Not
# quoted, so pip options may follow: TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
SMK_ARGS ?=

.PHONY: setup lock run run-tiny demo test test-fast lint params params-files dvc-repro dvc-yaml bench clean

setup: $(VENV)/.installed

# torch, then the exact versions of requirements.lock, then the project itself without resolving again.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# requirements.lock = pip freeze of a fresh install of pyproject.toml's dependencies and extras,
# without torch (TORCH_SPEC's job) and without the project. Review the diff, then `make setup`.
LOCK_VENV ?= /tmp/knowsubnet-lock-venv
lock:
	rm -rf $(LOCK_VENV)
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[workflow,dev]"
	{ echo "# requirements.lock: the exact versions \`make setup\` installs: pyproject.toml's dependencies and its"; \
	  echo "# extras workflow and dev, resolved on $$($(LOCK_VENV)/bin/python -c 'import platform as p; print("CPython", p.python_version(), "on", p.system(), p.machine())') with TORCH_SPEC=$(TORCH_SPEC)."; \
	  echo "# No torch line: make setup installs torch first from TORCH_SPEC (default torch==2.13.0; the CPU or the"; \
	  echo "# CUDA wheel, docs/ENVIRONMENT.md), because a torch from PyPI pulls gigabytes of CUDA wheels."; \
	  echo "# Regenerate with \`make lock\` (a fresh resolve in a temporary virtual environment)."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -iv '^torch=='; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock
	rm -rf $(LOCK_VENV)

# params.yaml reads the datasets from the local mirror ../shared/data; without it they download.
# (A --config in SMK_ARGS replaces this one: add data__mirror=null to it.)
NO_MIRROR := $(if $(wildcard ../shared/data),,--config data__mirror=null)
# (a variable: a comma written inside $(if ...) would split its arguments)
NO_MIRROR_NOTE := no local mirror ../shared/data, so data.mirror=null: the datasets download from their canonical sources

run-tiny: setup
	$(if $(NO_MIRROR),@echo "make run-tiny: $(NO_MIRROR_NOTE)")
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/local $(NO_MIRROR) $(SMK_ARGS)

# The demo preset downloads its data unless the local mirror ../shared/data is there.
MIRROR_CONFIG := $(if $(wildcard ../shared/data),config/mirror-local.yaml,)

# The main job: the demo preset's real model on one relation and one concept (config/overlays/demo-short.yaml).
run: setup
	$(if $(MIRROR_CONFIG),,@echo "make run: no local mirror ../shared/data: the datasets download from their canonical sources")
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/local \
		--configfile config/presets/demo.yaml config/overlays/demo-short.yaml $(MIRROR_CONFIG) $(SMK_ARGS)

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/local \
		--configfile config/presets/demo.yaml $(MIRROR_CONFIG) $(SMK_ARGS)

# On both cores (pytest-xdist), the slowest tests' durations printed at the end.
TEST_ARGS ?= -n $(CORES) --durations=25
test: setup
	$(PY) -m pytest -q $(TEST_ARGS)

# Every module's fast tests (-m "not slow": no whole-pipeline or engine runs): about 2 min.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(TEST_ARGS)

# The style, as tests/workflow/test_style.py checks it.
lint: setup
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

# config/base.yaml and config/params.schema.yaml are generated from the params' sections
# (src/knowsubnet/core/sections.py); tests/unit/core/test_config_files.py checks they are current.
# After a change: make params-files params.
params-files: setup
	$(PY) -m knowsubnet.core.config_files

# params.yaml is what DVC reads; tests/workflow/test_params.py checks the committed one is `make params` (no PRESET).
# SET: space-separated KEY=VALUE overrides, VALUE as YAML (make params SET="train.steps=10 run.seeds=[0]").
# dvc.yaml follows at once: its stages are those of params.yaml's `run`.
PRESET ?=
OVERLAY ?=
SET ?=
params: setup
	$(PY) workflow/params_yaml.py $(strip $(if $(PRESET),--preset $(PRESET),) $(foreach o,$(OVERLAY),--overlay $(o)) $(foreach s,$(SET),--set '$(s)'))
	PATH="$(abspath $(BIN)):$$PATH" $(PY) workflow/dvc_yaml.py dvc.yaml

# dvc.yaml is generated from the Snakemake rules (workflow/dvc_yaml.py); tests/workflow/test_dvc_yaml.py checks it is current.
dvc.yaml: Snakefile params.yaml workflow/rules/*.smk workflow/dvc_yaml.py $(wildcard src/knowsubnet/*.py src/knowsubnet/*/*.py src/knowsubnet/*/*/*.py)
	PATH="$(abspath $(BIN)):$$PATH" $(PY) workflow/dvc_yaml.py dvc.yaml

dvc-yaml: dvc.yaml

# dvc.yaml made current first (params.yaml edited, or rules changed, since it was written)
dvc-repro: setup dvc.yaml
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

bench: setup
	$(PY) benchmarks/bench_mask_step.py
	$(PY) benchmarks/bench_csqa_features.py --questions 32

clean:
	rm -rf data/raw data/processed results/* .knowsubnet .snakemake logs
	touch results/.gitkeep
