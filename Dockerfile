# Switchyard's container image.
#
#   docker build -t switchyard .                   # CPU image (BuildKit, a registry)
#   docker build -t switchyard:cuda --target cuda .  # GPU image (see README)
#   make image                                     # here, without a registry
#
# Stages: `common` (what every image shares: labels, environment, user, ports,
# entrypoint), `prebuilt` (a binary built on the host: what `make image` and
# `make image-test` build on a base made locally, since no registry is
# reachable from the project's machines), `chef`/`planner`/`build` (the release
# build, dependencies cached in their own layer with cargo-chef), `cuda` (the
# GPU variant) and `runtime` (the default, last). The public stages need
# BuildKit (Docker 23 and later by default): the classic builder builds every
# stage up to the target, `prebuilt` included.
#
# The runtime base is distroless's cc image: glibc, libgcc and libstdc++ (ONNX
# Runtime is C++), CA certificates, a nonroot user (65532), and no shell or
# package manager for an attacker to use. debian:bookworm-slim works too
# (--build-arg RUNTIME_BASE=debian:bookworm-slim): the same Debian 12 libraries,
# plus a shell for debugging.
#
# ONNX Runtime's library comes from the onnxruntime wheel on PyPI (make ort),
# the same pinned version as everywhere else, and sits beside the binary, where
# the binary looks for it.
#
# `docker run IMAGE serve` (what SageMaker runs) serves /opt/ml/model under
# SageMaker's contract; Vertex AI's AIP_* variables switch on its own; the
# labels tell SageMaker that the image takes SAGEMAKER_BIND_TO_PORT and
# serves multi-model endpoints.

ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

# --- common, then prebuilt: first, so that the classic builder (no BuildKit)
# stops after them when asked for `prebuilt` and needs no registry image
# (make image passes RUNTIME_BASE=switchyard-base:bookworm).
FROM ${RUNTIME_BASE} AS common
ARG RUNTIME_BASE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="switchyard" \
      org.opencontainers.image.description="A model-serving gateway: KServe V2 / Triton / MLflow protocols, ONNX and safetensors, dynamic batching, canary traffic" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_BASE}" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      com.amazonaws.sagemaker.capabilities.multi-models=true
ENV PATH=/opt/switchyard:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SWITCHYARD_STATE_DIR=/var/lib/switchyard \
    SWITCHYARD_METRICS=0.0.0.0:8002 \
    RUST_LOG=info
USER 65532:65532
EXPOSE 8000 8001 8002
ENTRYPOINT ["switchyard"]
CMD ["serve", "--models", "/mnt/models"]

# Its build context is a folder holding `switchyard`, `libonnxruntime.so` and
# an empty `state` folder (scripts/image.sh makes it).
FROM common AS prebuilt
COPY switchyard libonnxruntime.so /opt/switchyard/
COPY --chown=65532:65532 state /var/lib/switchyard
# The state directory (traffic policies, MLflow downloads) is the one place the
# server writes: a volume, so that the root filesystem can be read-only.
VOLUME ["/var/lib/switchyard"]

# --- the release build.
FROM ${RUST_IMAGE} AS chef
RUN cargo install --locked cargo-chef@0.1.73 \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
# Dependencies alone, a layer that a change to Switchyard's code keeps.
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin switchyard
COPY . .
RUN make build \
 && mkdir -p /out /state \
 && cp target/release/switchyard target/release/libonnxruntime.so /out/

# --- the GPU variant: ONNX Runtime's CUDA provider (the onnxruntime-gpu wheel)
# and candle's CUDA kernels, built by `make build-cuda` against the CUDA 13.0
# toolkit from NVIDIA's PyPI wheels. Runs with `docker run --gpus all`.
FROM build AS build-cuda
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
RUN make build-cuda \
 && mkdir -p /out-cuda \
 && cp target/release/switchyard target/release/lib*.so /out-cuda/ \
 && cp -a .cache/cuda/lib64/. /out-cuda/

# The CUDA libraries come from the wheels, so the base is the CPU one; the
# driver's libcuda.so.1 is mounted by the NVIDIA Container Toolkit.
FROM common AS cuda
LABEL org.opencontainers.image.title="switchyard-cuda"
COPY --from=build-cuda /out-cuda/ /opt/switchyard/
COPY --from=build --chown=65532:65532 /state /var/lib/switchyard
ENV LD_LIBRARY_PATH=/opt/switchyard
VOLUME ["/var/lib/switchyard"]

# --- runtime: the default image.
FROM common AS runtime
COPY --from=build /out/ /opt/switchyard/
COPY --from=build --chown=65532:65532 /state /var/lib/switchyard
VOLUME ["/var/lib/switchyard"]
