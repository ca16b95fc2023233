# Baton: one image for the scheduler, the executors and the CLI.
#   docker build -t baton .
#   docker run --rm baton --help
# Build stage: the release binary (build.rs compiles the proto with pure-Rust protox, so no
# protoc is needed).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN cargo build --release --locked --bin baton \
 && strip target/release/baton

# Runtime stage: the binary, CA certificates for object stores over TLS, a non-root user
# owning the scheduler's state directory (a volume goes there).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/baton baton \
 && install -d -o baton -g baton /var/lib/baton/state
COPY --from=build /src/target/release/baton /usr/local/bin/baton
USER 10001
WORKDIR /var/lib/baton
# gRPC + Flight (scheduler), Flight (executor), Prometheus /metrics, /healthz, /readyz.
EXPOSE 50050 50051 9464
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["--help"]
