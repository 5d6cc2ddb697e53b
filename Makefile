# The two commands of the README's quick start, on a machine with Python >= 3.10 and pip:
#   make demo       set up .venv and run the whole default workflow (the embedded demo)
#   make test       set up .venv and run the whole test suite (what CI runs)
# and for development:
#   make test-fast  the tests not marked slow or gpu (the inner loop, ~2-3 min on 2 cores)
#   make lint       ruff (style, imports, errors), ruff format --check, snakemake --lint
#   make format     ruff format + import order, in place
#   make gpu-check  the GPU test tier and every GPU benchmark, into OUT=<folder> (a CUDA machine)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: setup mm-stack demo test test-fast lint format gpu-check bench clean

$(BIN)/.installed: pyproject.toml constraints.txt envs/mm-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	$(MAKE) mm-stack
	touch $@

# The OpenMMLab stack of the pose and seg stages (docs/pose_seg.md, "Install"), next to torch 2.13 CPU,
# numpy 2 and the contrib OpenCV: build tools first; mmcv 2.1.0 built from source against the installed
# torch (~15 min on 2 cores the first time; pip caches the wheel) and xtcocotools against numpy 2; then
# the rest without their declared dependencies, which would pull opencv-python over the contrib cv2,
# a CUDA torchvision and chumpy (none of them is needed).
mm-stack:
	$(BIN)/pip install --quiet -c constraints.txt setuptools ninja wheel Cython
	MAX_JOBS=$$(nproc) $(BIN)/pip install --quiet -c constraints.txt --no-deps --no-build-isolation \
		--no-binary xtcocotools mmcv xtcocotools
	$(BIN)/pip install --quiet -c constraints.txt --no-deps -r envs/mm-requirements.txt
	$(BIN)/python -c "import cv2, mmcv.ops, mmpose.models, mmseg.apis, mmdet.apis; cv2.optflow.DualTVL1OpticalFlow_create"

setup: $(BIN)/.installed

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" snakemake --cores $(CORES)

test: setup
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q

test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q -m "not slow and not gpu"

lint: setup
	$(BIN)/ruff check cocon tests bench study
	$(BIN)/ruff format --check cocon tests bench study
	PATH="$(abspath $(BIN)):$$PATH" snakemake --lint

format: setup
	$(BIN)/ruff check --select I --fix cocon tests bench study
	$(BIN)/ruff format cocon tests bench study

OUT ?= gpu-check
gpu-check: setup
	PATH="$(abspath $(BIN)):$$PATH" python -m cocon gpu-check --out $(OUT)

clean:
	rm -rf results logs benchmarks .snakemake
