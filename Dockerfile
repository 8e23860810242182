# The bdjobs image: one binary, every role. The subcommand picks the role:
#   docker run IMAGE api | worker | projector | migrate | keys create --tenant T | ...
# docker-compose.yml runs it next to Postgres, RabbitMQ and MinIO.

# ---- build -----------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src

# Dependencies first, against an empty crate, so that a change to the source does not rebuild
# them: this layer is reused until Cargo.toml or Cargo.lock changes. (No packages to add: the
# image's gcc is all that aws-lc-sys, the one C dependency, needs.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# Then the real source: src/, migrations/ (embedded into the binary) and examples/ (read by
# `bdjobs demo` at run time); .dockerignore keeps target/, .git and the like out. The empty
# crate's build must not count as up to date for the real one, hence removing its fingerprints
# and touching the crate roots.
COPY . .
RUN rm -rf target/release/.fingerprint/bdjobs-* \
    && touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && mkdir -p examples

# ---- run -------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# CA certificates for TLS to S3 and other HTTPS endpoints; nothing else. The compose file's
# health checks use bash, grep and /proc, which the base image already has.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 bdjobs \
    && useradd --uid 10001 --gid bdjobs --home-dir /app --no-create-home --no-log-init \
        --shell /usr/sbin/nologin bdjobs

WORKDIR /app
COPY --from=builder /src/target/release/bdjobs /usr/local/bin/bdjobs
COPY --from=builder /src/examples ./examples
# The working directory is writable by the service user: without BDJOBS_ASSETS, assets go to
# ./var/assets (fine for `bdjobs demo`; deployments set BDJOBS_ASSETS=s3://...).
RUN chown 10001:10001 /app

USER 10001:10001

# Listen on every interface: the default, 127.0.0.1:8080, cannot be reached from outside the
# container.
ENV BDJOBS_LISTEN=0.0.0.0:8080
EXPOSE 8080

ENTRYPOINT ["bdjobs"]
CMD ["api"]
