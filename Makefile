# lmd — the common paths. CMake does the building; this file wires the
# install, fetch, build and test steps together so that a fresh Debian 12
# machine needs only `make run` or `make test`.

BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_FUZZ ?= build-fuzz
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
VENV       := .venv
PY         := $(VENV)/bin/python
MODEL      ?= models/default.gguf
HOST       ?= 127.0.0.1
PORT       ?= 8080
CMAKE_FLAGS ?=
ifeq ($(CI),true)
CMAKE_FLAGS += -DLMD_WERROR=ON
endif

.PHONY: all deps deps-peer model build build-asan run test test-unit test-asan test-integration \
        bench bench-engine golden clean format format-check fuzz fuzz-build fuzz-gguf test-fuzz parity

all: build

deps:
	@scripts/install-deps.sh

deps-peer:
	@scripts/install-deps.sh --peer

model: deps
	@scripts/fetch-model.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

$(BUILD_ASAN)/CMakeCache.txt:
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DLMD_SANITIZE=ON $(CMAKE_FLAGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

build-asan: $(BUILD_ASAN)/CMakeCache.txt
	cmake --build $(BUILD_ASAN) -j $(JOBS)

run: deps model
	@$(MAKE) --no-print-directory build
	./$(BUILD)/lmd info $(MODEL)
	./$(BUILD)/lmd serve -m $(MODEL) --host $(HOST) --port $(PORT)

test: deps model
	@$(MAKE) --no-print-directory format-check test-unit test-asan test-fuzz test-integration

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The whole unit suite again under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: build-asan
	cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j $(JOBS)

test-integration: build
	@if ls tests/integration/test_*.py >/dev/null 2>&1; then \
		LMD_BIN=$(CURDIR)/$(BUILD)/lmd LMD_MODEL=$(CURDIR)/$(MODEL) $(PY) -m pytest -q tests/integration; \
	else echo "no integration tests yet"; fi

bench: bench-engine

bench-engine: deps-peer model build
	LMD_BIN=$(CURDIR)/$(BUILD)/lmd $(PY) bench/engine.py --model $(MODEL)

# Regenerates the reference token ids and logits that the tests compare to,
# using llama.cpp (llama-cpp-python) on the same GGUF files.
golden: deps-peer model build
	$(PY) tests/golden/make_golden.py

FORMAT_FILES = $$(git ls-files 'src/*.c' 'src/*.h' 'tests/*.c' 'bench/*.c')

format:
	clang-format -i $(FORMAT_FILES)

# Fails, naming each file and line, where a C file differs from .clang-format.
format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)

# Coverage-guided fuzzing (clang's libFuzzer with ASan + UBSan): one driver
# per parser in tests/fuzz, lmd_lib instrumented in its own build folder.
# `make test` runs each for FUZZ_TEST_RUNS executions; `make fuzz` is the
# longer campaign (FUZZ_RUNS executions each, or FUZZ_SECONDS each when
# FUZZ_RUNS=0; FUZZ_ONLY=NAME picks one driver).
FUZZ_RUNS ?= 0
FUZZ_SECONDS ?= 60
FUZZ_TEST_RUNS ?= 3000
FUZZ_ONLY ?=

$(BUILD_FUZZ)/CMakeCache.txt:
	cmake -S . -B $(BUILD_FUZZ) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DLMD_FUZZ=ON

fuzz-build: $(BUILD_FUZZ)/CMakeCache.txt
	cmake --build $(BUILD_FUZZ) --target fuzzers -j $(JOBS)

fuzz: fuzz-build
	scripts/fuzz.sh $(BUILD_FUZZ) $(FUZZ_RUNS) $(FUZZ_SECONDS) $(FUZZ_ONLY)

test-fuzz: fuzz-build
	scripts/fuzz.sh $(BUILD_FUZZ) $(FUZZ_TEST_RUNS)

fuzz-gguf: fuzz-build
	scripts/fuzz.sh $(BUILD_FUZZ) $(FUZZ_RUNS) $(FUZZ_SECONDS) gguf

# lmd's kernels against llama.cpp's, bit for bit (developer tool; needs the peer).
GGML_LIB = $(shell $(PY) -c 'import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib"))' 2>/dev/null)
parity: deps-peer build
	$(CC) -O2 -D_GNU_SOURCE -Isrc tests/parity/ggml_parity.c $(BUILD)/liblmd_lib.a -ljansson -lpcre2-8 -lm -lpthread -ldl \
		-o $(BUILD)/ggml_parity
	./$(BUILD)/ggml_parity $(GGML_LIB)
