# make setup   - virtual environment with everything the pipeline needs (CPU torch unless TORCH_SPEC says otherwise)
# make run     - the main job: the whole pipeline for params.yaml (tiny preset, local data mirror)
# make test    - the test suite
# make demo    - the demo preset (SmolLM2-135M from PyPI), CPU friendly
# make params   - write params.yaml = config/base.yaml + config/mirror-local.yaml [+ config/presets/$(PRESET).yaml]
# make dvc.yaml - regenerate dvc.yaml from the Snakemake rules (after editing rules or `run` in params.yaml)
# make dvc-repro, make bench

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CORES ?= 2
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels on a CPU machine.
TORCH_SPEC ?= torch==2.13.0
SMK_ARGS ?=

.PHONY: setup run demo test params dvc-repro dvc-yaml bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[workflow,dev]"
	touch $@

run: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/local $(SMK_ARGS)

# The demo preset downloads its data unless the local mirror ../shared/data is there.
MIRROR_CONFIG := $(if $(wildcard ../shared/data),config/mirror-local.yaml,)

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/local \
		--configfile config/presets/demo.yaml $(MIRROR_CONFIG) $(SMK_ARGS)

test: setup
	$(PY) -m pytest -q

# params.yaml is what DVC reads; tests/workflow/test_params.py checks the committed one is `make params` (no PRESET).
PRESET ?=
params: setup
	$(PY) workflow/params_yaml.py $(if $(PRESET),--preset $(PRESET),)

# dvc.yaml is generated from the Snakemake rules (workflow/dvc_yaml.py); tests/workflow/test_dvc_yaml.py checks it is current.
dvc.yaml: Snakefile params.yaml workflow/rules/*.smk workflow/dvc_yaml.py workflow/scripts/*.py $(wildcard src/knowsubnet/*.py src/knowsubnet/*/*.py src/knowsubnet/*/*/*.py)
	PATH="$(abspath $(BIN)):$$PATH" $(PY) workflow/dvc_yaml.py dvc.yaml

dvc-yaml: dvc.yaml

dvc-repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

bench: setup
	$(PY) benchmarks/bench_mask_step.py

clean:
	rm -rf data/raw data/processed results/* .knowsubnet .snakemake logs
	touch results/.gitkeep
