# The two commands of the README's quick start, on a machine with Python >= 3.10 and pip:
#   make demo       set up .venv and run the whole default workflow (the embedded demo)
#   make test       set up .venv and run the whole test suite (what CI runs)
# and for development:
#   make test-fast  the tests not marked slow or gpu (the inner loop, ~2-3 min on 2 cores)
#   make lint       ruff (style, imports, errors), ruff format --check, snakefmt --check, snakemake --lint (CI runs it)
#   make format     ruff format + import order, snakefmt, in place
#   make gpu-check  bench/gpu_check.py: the GPU test tier and every GPU benchmark, into OUT=<folder> (a CUDA machine)
#   make mm-full    mmcv compiled from source in place of mmcv-lite (docs/pose_seg.md, Install; opt-in)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: setup mm-stack mm-full demo test test-fast lint format gpu-check bench clean

$(BIN)/.installed: pyproject.toml constraints.txt envs/mm-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	$(MAKE) mm-stack
	touch $@

# The OpenMMLab stack of the pose and seg stages (docs/pose_seg.md, "Install"), next to torch 2.13 CPU,
# numpy 2 and the contrib OpenCV, with nothing compiled (~15 s): the packages without their declared
# dependencies, which would pull opencv-python over the contrib cv2, a CUDA torchvision and chumpy (none
# of them is needed); mmcv-lite (mmcv without its compiled ops: cocon.preprocess.mm_ops stands in, with
# nms in torch) and the PyPI wheel of xtcocotools (built for numpy 1: pycocotools' mask code stands in),
# unless `make mm-full` has installed the compiled ones. The check imports cocon.preprocess.mm first:
# it registers the stand-ins.
MM_CHECK = $(BIN)/python -c "import cocon.preprocess.mm as mm, cv2, mmcv.ops, mmpose.models, mmseg.apis, mmdet.apis; \
	cv2.optflow.DualTVL1OpticalFlow_create; print('OpenMMLab stack:', mm.OPS)"
mm-stack:
	$(BIN)/pip install --quiet -c constraints.txt --no-deps setuptools -r envs/mm-requirements.txt
	$(BIN)/pip show --quiet mmcv 2>/dev/null || $(BIN)/pip install --quiet -c constraints.txt --no-deps mmcv-lite xtcocotools
	$(MM_CHECK)

# Opt-in, for GPU speed or models with other mmcv ops: mmcv 2.1.0 built from source against the installed
# torch, with all its compiled CPU (and, with CUDA, GPU) ops (~15-30 min on 2 cores the first time; pip
# caches the wheel), and xtcocotools built against numpy 2, in place of mmcv-lite and the stand-ins.
mm-full: setup
	$(BIN)/pip install --quiet -c constraints.txt setuptools ninja wheel Cython
	$(BIN)/pip uninstall --quiet -y mmcv-lite
	MAX_JOBS=$$(nproc) $(BIN)/pip install --quiet -c constraints.txt --no-deps --no-build-isolation \
		--force-reinstall --no-binary xtcocotools mmcv xtcocotools
	$(MM_CHECK)

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
	$(BIN)/snakefmt --check Snakefile rules
	PATH="$(abspath $(BIN)):$$PATH" snakemake --lint

format: setup
	$(BIN)/ruff check --select I --fix cocon tests bench study
	$(BIN)/ruff format cocon tests bench study
	$(BIN)/snakefmt Snakefile rules

OUT ?= gpu-check
gpu-check: setup
	PATH="$(abspath $(BIN)):$$PATH" python bench/gpu_check.py --out $(OUT)

clean:
	rm -rf results logs benchmarks .snakemake
