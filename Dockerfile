# syntax=docker/dockerfile:1
# The carerix-operator image: a static-enough release build on Debian bookworm, run on distroless.
#
#   docker build -t ghcr.io/hiredata/carerix-operator:0.1.0 .
#
# The runtime image has no shell and no package manager; it runs as the nonroot user 65532, which
# the Helm chart's securityContext also requires (runAsNonRoot, readOnlyRootFilesystem).

FROM rust:1-bookworm AS builder
WORKDIR /src
# Manifests first, so that dependency downloads are cached while only sources change.
COPY Cargo.toml Cargo.lock ./
COPY carerix-sim/Cargo.toml carerix-sim/Cargo.toml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    mkdir -p src carerix-sim/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > carerix-sim/src/main.rs && touch carerix-sim/src/lib.rs \
    && cargo fetch --locked
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin carerix-operator \
    && cp target/release/carerix-operator /carerix-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="carerix-operator" \
      org.opencontainers.image.description="Kubernetes operator that connects recruitment platforms to Carerix" \
      org.opencontainers.image.source="https://github.com/hiredata/carerix-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /carerix-operator /carerix-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/carerix-operator"]
CMD ["run"]
