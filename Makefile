# lmd — the common paths. CMake does the building; this file wires the
# install, fetch, build and test steps together so that a fresh Debian 12
# machine needs only `make run` or `make test`.

BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_FUZZ ?= build-fuzz
BUILD_TSAN ?= build-tsan
BUILD_STATIC ?= build-static
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

.PHONY: all deps deps-peer deps-bench model build build-asan run test test-unit test-asan test-integration \
        bench bench-engine golden clean format format-check fuzz fuzz-build fuzz-gguf fuzz-pack fuzz-campaign test-fuzz test-tsan test-integration-asan parity \
        static test-static

all: build

deps:
	@scripts/install-deps.sh

deps-peer:
	@scripts/install-deps.sh --peer

deps-bench:
	@scripts/install-deps.sh --peer --bench

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

# A fully static lmd (CPU engine and gateway, no CUDA): $(BUILD_STATIC)/lmd.
# h2o's archive is built first from Debian's source package (Debian ships
# the other archives); docs/deploy.md says what a static binary cannot do.
$(BUILD_STATIC)/CMakeCache.txt:
	scripts/build-h2o-static.sh $(BUILD_STATIC)/h2o
	cmake -S . -B $(BUILD_STATIC) -DCMAKE_BUILD_TYPE=Release -DLMD_STATIC=ON \
		-DLMD_H2O_STATIC_DIR=$(CURDIR)/$(BUILD_STATIC)/h2o $(CMAKE_FLAGS)

static: $(BUILD_STATIC)/CMakeCache.txt
	scripts/build-h2o-static.sh $(BUILD_STATIC)/h2o
	cmake --build $(BUILD_STATIC) -j $(JOBS) --target lmd

# The static binary's own checks (tests/integration/test_static.py: no
# interpreter or DT_NEEDED, --version, the dynamic build's greedy completion
# on the default model, served and through a gateway).
test-static: static build
	LMD_STATIC_BIN=$(CURDIR)/$(BUILD_STATIC)/lmd LMD_BIN=$(CURDIR)/$(BUILD)/lmd LMD_MODEL=$(CURDIR)/$(MODEL) $(PY) -m pytest -q tests/integration/test_static.py

run: deps model
	@$(MAKE) --no-print-directory build
	./$(BUILD)/lmd info $(MODEL)
	./$(BUILD)/lmd serve -m $(MODEL) --host $(HOST) --port $(PORT)

test: deps model
	@$(MAKE) --no-print-directory format-check test-unit test-asan test-tsan test-fuzz test-integration \
		test-integration-asan test-static

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The whole unit suite again under AddressSanitizer + UndefinedBehaviorSanitizer,
# less the *_avx2 repeats of the engine and scheduler tests: they exist to pin
# the AVX2 kernels on machines whose default is AVX-512, which the Release run
# above covers; under ASan they repeat the same memory behaviour for minutes.
test-asan: build-asan
	cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan-unit.supp:print_suppressions=0 \
		ctest --output-on-failure -j $(JOBS) -E '_avx2$$'

test-integration: build
	@if ls tests/integration/test_*.py >/dev/null 2>&1; then \
		LMD_BIN=$(CURDIR)/$(BUILD)/lmd LMD_MODEL=$(CURDIR)/$(MODEL) $(PY) -m pytest -q tests/integration; \
	else echo "no integration tests yet"; fi

# A subset of the integration tests against a live `lmd serve` from the
# ASan + UBSan build: any sanitizer report, or a leak at exit beyond h2o's
# loop state (tests/lsan.supp), fails the test that stopped that server.
# The grammar, schema, tool-call and template parsers are fuzzed (make
# test-fuzz) and unit-tested under ASan; of their integration tests only
# the structured-output ones run here, and of the prep workers' only those
# that free a request whose client left, to keep the suite's time bounded.
ASAN_ITESTS ?= tests/integration/test_server.py tests/integration/test_hardening.py tests/integration/test_gateway.py \
	tests/integration/test_gateway_h2.py \
	tests/integration/test_discovery.py tests/integration/test_structured.py tests/integration/test_dialect_tools.py \
	tests/integration/test_prep.py::test_client_gone_during_prep_is_freed \
	tests/integration/test_prep.py::test_tokenize_client_gone_during_prep

test-integration-asan: build build-asan
	LMD_SANITIZED=1 LMD_BIN=$(CURDIR)/$(BUILD_ASAN)/lmd LMD_UPSTREAM_BIN=$(CURDIR)/$(BUILD)/lmd LMD_MODEL=$(CURDIR)/$(MODEL) \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
		$(PY) -m pytest -q $(ASAN_ITESTS)

bench: bench-engine

bench-engine: deps-peer model build
	LMD_BIN=$(CURDIR)/$(BUILD)/lmd $(PY) bench/engine.py --model $(MODEL)

# Regenerates the reference token ids and logits that the tests compare to,
# using llama.cpp (llama-cpp-python) on the same GGUF files.
golden: deps-peer model build
	$(PY) tests/golden/make_golden.py

FORMAT_FILES = $$(git ls-files 'src/*.c' 'src/*.h' 'src/*.cu' 'src/*.cuh' 'tests/*.c' 'bench/*.c')

format:
	clang-format -i $(FORMAT_FILES)

# Fails, naming each file and line, where a C file differs from .clang-format.
format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_STATIC)

# The unit tests whose subjects share memory between threads (the compute
# pool, the metrics and trace recorders, the scheduling policy) under
# ThreadSanitizer, -O2: a data race fails the run. sched_test is not in the
# list: on the real model under TSan it runs past ten minutes on 2 cores.
TSAN_TESTS ?= ^(sched_fake_test|api_fake_test|sched_policy_test|pool_test|obs_test)$$

$(BUILD_TSAN)/CMakeCache.txt:
	cmake -S . -B $(BUILD_TSAN) -DCMAKE_BUILD_TYPE=Release -DLMD_TSAN=ON $(CMAKE_FLAGS)

test-tsan: $(BUILD_TSAN)/CMakeCache.txt
	cmake -S . -B $(BUILD_TSAN) > /dev/null # picks up test files added since the folder was configured
	cmake --build $(BUILD_TSAN) -j $(JOBS) --target sched_fake_test api_fake_test sched_policy_test pool_test obs_test
	cd $(BUILD_TSAN) && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 ctest --output-on-failure -R '$(TSAN_TESTS)'

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

# The campaign of docs/testing.md: every driver at once, FUZZ_WORKERS
# libFuzzer workers each (N, or N,NAME=N,... per driver) for FUZZ_SECONDS.
# `make fuzz-pack` gathers the drivers, their libraries and corpora into
# FUZZ_PACK, a folder that runs on a machine without build tools
# (./fuzz-campaign.sh -w WORKERS -t SECONDS . there).
FUZZ_WORKERS ?= 1
FUZZ_PACK ?= $(BUILD_FUZZ)/pack

fuzz-pack: fuzz-build
	rm -rf $(FUZZ_PACK)
	scripts/fuzz-campaign.sh --pack $(BUILD_FUZZ) $(FUZZ_PACK)

fuzz-campaign: fuzz-pack
	rm -rf $(BUILD_FUZZ)/campaign-run
	$(FUZZ_PACK)/fuzz-campaign.sh -w $(FUZZ_WORKERS) -t $(FUZZ_SECONDS) -o $(BUILD_FUZZ)/campaign-run $(FUZZ_PACK) $(FUZZ_ONLY)

# lmd's kernels against llama.cpp's, bit for bit (developer tool; needs the peer).
GGML_LIB = $(shell $(PY) -c 'import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib"))' 2>/dev/null)
parity: deps-peer build
	$(CC) -O2 -D_GNU_SOURCE -Isrc tests/parity/ggml_parity.c $(BUILD)/liblmd_lib.a -ljansson -lpcre2-8 -lm -lpthread -ldl \
		-o $(BUILD)/ggml_parity
	./$(BUILD)/ggml_parity $(GGML_LIB)
