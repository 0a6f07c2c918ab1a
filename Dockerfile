# handover's container image: built in the Rust image, run in distroless as
# non-root. Nothing beyond the Rust toolchain is needed to build (the gRPC
# schemas are compiled by protox, a pure-Rust protobuf compiler).
#
#   docker build -t handover:0.1.0 .
#   docker run --rm handover:0.1.0 --help
#
# CI lints this file (hadolint, checkov) but builds no image: no engine there.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Manifests first so the dependency build is cached apart from the sources.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY crates crates
COPY proto proto
COPY benches benches
COPY tests tests
RUN cargo build --release --locked -p handover \
    && install -D -m 0755 target/release/handover /out/handover

# distroless/cc: glibc and libgcc, no shell, no package manager; the
# "nonroot" tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/handover /usr/local/bin/handover
USER 65532:65532
# SIP (edge), SIP (worker), Raft gRPC, admin HTTP (edge, worker).
EXPOSE 5060/udp 5080/udp 7001/tcp 9100/tcp 9101/tcp
# Kubernetes probes /healthz and /readyz on the admin port; the image has no
# shell or curl to run a HEALTHCHECK with.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/handover"]
CMD ["--help"]
