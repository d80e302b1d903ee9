# fastminerf: set up, run, test. Everything lives in a local virtual environment (.venv).
#   make demo    set up and run the built-in default job
#   make test    set up and run the tests (pytest, then the C++ tests and the nvcc compile of every kernel)
#   make bench-prepare   speed of `fastminerf prepare` on 512 px real clips (needs ../shared/data/real)
# TORCH_SPEC picks the torch build: the CPU build by default; on a GPU machine e.g. TORCH_SPEC="torch==2.14.1".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
NATIVE_SOURCES := $(wildcard cuda/src/* cuda/include/fastminerf/*)

.PHONY: install demo test test-python test-native check-cuda-extension bench bench-prepare clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# `prepare` needs mediapipe 0.10.21 (the newest release with its face-mesh and segmentation models inside the
# wheel). Its declared dependencies would pull jax/jaxlib and numpy<2, so it is installed --no-deps after the
# dependencies it really uses (requirements-prepare.txt, protobuf<5 among them), then imported once as a check.
MEDIAPIPE_SPEC ?= mediapipe==0.10.21

$(VENV)/.deps: $(BIN)/python requirements.txt requirements-prepare.txt
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -r requirements.txt -r requirements-prepare.txt
	$(BIN)/pip install -q --no-deps "$(MEDIAPIPE_SPEC)"
	$(BIN)/python -c "import mediapipe as mp; mp.solutions.face_mesh.FaceMesh; mp.solutions.selfie_segmentation.SelfieSegmentation"
	touch $@

$(VENV)/.installed: $(VENV)/.deps setup.py $(NATIVE_SOURCES)
	$(BIN)/pip install -q --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

# The main job: procedural heads -> generic training -> personalisation of a held-out head -> an
# expression-transfer video and metric tables, in DEMO_MINUTES of wall-clock time.
DEMO_OUT ?= demo_out
DEMO_MINUTES ?= 3

demo: install
	$(BIN)/fastminerf demo $(DEMO_OUT) --minutes $(DEMO_MINUTES) --overwrite

test: test-python test-native

test-python: install
	$(BIN)/python -m pytest -q tests

# C++ tests of the shared math (ctest) and a compile of every .cu file by nvcc (sm_80 and sm_90 by default).
test-native:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release $(if $(shell command -v nvcc),,-DFASTMINERF_BUILD_CUDA=OFF) > build-cmake.log 2>&1 || (cat build-cmake.log; exit 1)
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

# Build the full extension (CPU + CUDA kernels and their torch registrations) against a CUDA build of torch in a
# separate venv, for sm_80 and sm_90, and run the CPU tests with it. Needs nvcc and ~6 GB of disk; no GPU.
CUDA_VENV ?= build/venv-cuda
CUDA_TORCH_SPEC ?= torch==2.14.1
# the toolkit nvcc really runs from (nvcc may be a wrapper script elsewhere on the PATH)
CUDA_HOME ?= $(shell cd /tmp && touch fmn_probe.cu && nvcc --dryrun -c fmn_probe.cu 2>&1 | sed -n 's/^\#\$$ _HERE_=\(.*\)\/bin$$/\1/p' | head -1)
check-cuda-extension:
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q -U pip
	$(CUDA_VENV)/bin/pip install -q "$(CUDA_TORCH_SPEC)" -r requirements.txt -r requirements-prepare.txt
	$(CUDA_VENV)/bin/pip install -q --no-deps "$(MEDIAPIPE_SPEC)"
	rm -rf build/cuda-ext && git worktree add -f --detach build/cuda-ext HEAD
	cd build/cuda-ext && CUDA_HOME=$(CUDA_HOME) CPATH=$$(ls -d $(abspath $(CUDA_VENV))/lib/python3*/site-packages/nvidia/cu*/include | head -1) \
		FASTMINERF_CUDA_ARCHITECTURES="80;90" $(abspath $(CUDA_VENV))/bin/python setup.py build_ext --inplace
	cd build/cuda-ext && $(abspath $(CUDA_VENV))/bin/python -c "import fastminerf._C as C; assert C.with_cuda; print('CUDA kernels built')"
	cd build/cuda-ext && PYTHONPATH=. $(abspath $(CUDA_VENV))/bin/python -m pytest -q tests
	git worktree remove --force build/cuda-ext

bench: install
	$(BIN)/python benchmarks/kernels.py

bench-prepare: install
	$(BIN)/python benchmarks/prepare_speed.py

clean:
	rm -rf build build-cmake.log fastminerf/_C*.so *.egg-info
