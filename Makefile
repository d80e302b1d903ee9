# fastminerf: set up, run, test. Everything lives in a local virtual environment (.venv).
#   make demo    set up and run the built-in default job
#   make test    set up and run the tests (pytest, then the C++ tests and the nvcc compile of every kernel)
# TORCH_SPEC picks the torch build: the CPU build by default; on a GPU machine e.g. TORCH_SPEC="torch==2.14.1".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
NATIVE_SOURCES := $(wildcard cuda/src/* cuda/include/fastminerf/*)

.PHONY: install demo test test-python test-native bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(VENV)/.deps: $(BIN)/python requirements.txt
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps setup.py $(NATIVE_SOURCES)
	$(BIN)/pip install -q --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python benchmarks/kernels.py --quick

test: test-python test-native

test-python: install
	$(BIN)/python -m pytest -q tests

# C++ tests of the shared math (ctest) and a compile of every .cu file by nvcc (sm_80 and sm_90 by default).
test-native:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release $(if $(shell command -v nvcc),,-DFASTMINERF_BUILD_CUDA=OFF) > build-cmake.log 2>&1 || (cat build-cmake.log; exit 1)
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

bench: install
	$(BIN)/python benchmarks/kernels.py

clean:
	rm -rf build build-cmake.log fastminerf/_C*.so *.egg-info
