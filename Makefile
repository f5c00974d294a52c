# The README's two commands: `make quickstart` (demo run) and `make test` (whole suite).
# Each creates .venv and installs what it needs. PYTHON picks the interpreter for the venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Where no GPU exists, install the CPU build of torch first (a plain `torch` would pull a CUDA build).
CPU_TORCH ?= torch==2.13.0

.PHONY: quickstart test install venv dev lint docs bench clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if ! nvidia-smi -L >/dev/null 2>&1 && [ ! -e /dev/kfd ]; then \
		echo "no GPU found: installing the CPU build of torch ($(CPU_TORCH))"; \
		$(PIP) install -q "$(CPU_TORCH)" || echo "could not install $(CPU_TORCH); the package range decides"; \
	fi
	touch $@

venv: $(VENV)/.created

# Installs the package with its compiled kernels (scikit-build-core + CMake; build/ caches objects).
install: venv
	$(PIP) install -q ".[test]"

quickstart: install
	$(VENV)/bin/aam demo --output-dir demo-run

# The test install also builds the CUDA emulator modules (aam._C_emu32/_C_emu64) for the GPU-kernel tests.
# AAM_REQUIRE_NATIVE / AAM_REQUIRE_EMULATOR: the install built aam._C and the emulators, so a test that would
# skip without them fails instead (a broken C++ build cannot pass as skips).
test: venv
	AAM_BUILD_EMULATOR=ON $(PIP) install -q ".[test]"
	AAM_REQUIRE_NATIVE=1 AAM_REQUIRE_EMULATOR=1 $(PY) -m pytest -q tests

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks kernels

# The documentation site (mkdocs.yml): README, guides and API pages from the docstrings; warnings are errors.
docs: venv
	$(PIP) install -q ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: install
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-json=benchmarks/results/cpu-latest.json -q

# Developer build: compiles the modules into src/aam, so `PYTHONPATH=src` works (aam.native finds kernels/).
dev: venv
	$(PIP) install -q scikit-build-core pybind11
	cmake -S . -B build/dev -G Ninja -DAAM_INPLACE=ON -DAAM_BACKEND=$${AAM_BACKEND:-cpu} \
		-DAAM_BUILD_EMULATOR=$${AAM_BUILD_EMULATOR:-ON} \
		-DPython_EXECUTABLE=$(abspath $(PY)) -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir)
	cmake --build build/dev -j2

clean:
	rm -rf build dist $(VENV) src/aam/*.so
