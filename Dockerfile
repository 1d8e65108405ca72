# syntax=docker/dockerfile:1
# Courier image: the `courier` and `courier-dlq` binaries plus the shipped topologies, in /app.
#   docker build -t courier:local .

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# `--workspace` lets `--bin` pick courier-dlq from the dlq-tool member. Cache mounts keep the
# crate registry and build artefacts between builds, so the binaries are copied out of the
# cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bin courier --bin courier-dlq \
    && mkdir -p /out \
    && cp target/release/courier target/release/courier-dlq /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin courier
WORKDIR /app
COPY --from=builder /out/courier /out/courier-dlq /app/
COPY topology/ /app/topology/
# The default --topology (topology/notifications.toml) resolves against WORKDIR /app; the copy
# here is what a mounted or edited file replaces (the binaries also carry a built-in copy).
ENV PATH="/app:${PATH}"
USER courier
ENTRYPOINT ["courier"]
