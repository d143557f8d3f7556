# Switchyard: multi-stage release build. ONNX Runtime comes from the onnxruntime
# wheel on PyPI (make ort), like everywhere else; nothing else is downloaded.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make build

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin switchyard
# The library sits beside the binary, where the binary looks for it.
COPY --from=build /src/target/release/switchyard /opt/switchyard/switchyard
COPY --from=build /src/target/release/libonnxruntime.so /opt/switchyard/libonnxruntime.so
COPY --chown=root:root models /models
USER switchyard
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/v2/health/ready || exit 1
ENTRYPOINT ["/opt/switchyard/switchyard"]
CMD ["serve", "--models", "/models", "--http", "0.0.0.0:8000"]
