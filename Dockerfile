# Multi-stage build: the builder compiles ragd and lays out the model files;
# the runtime image holds only the binary, the models and the config, and
# runs as an unprivileged user.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/fetch-models /opt/ragd/models \
 && cargo build --release --locked -p ragd

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/ragd --create-home ragd
COPY --from=build /src/target/release/ragd /usr/local/bin/ragd
COPY --from=build /opt/ragd/models /opt/ragd/models
COPY config /etc/ragd
ENV RAGD_DATA_DIR=/var/lib/ragd \
    RAGD_SERVER__LISTEN=0.0.0.0:8080 \
    RAGD_MODELS__DIR=/opt/ragd/models \
    RAGD_MODELS__MANIFEST=/etc/ragd/models.toml
USER ragd
VOLUME ["/var/lib/ragd"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["ragd"]
CMD ["serve", "--config", "/etc/ragd/ragd.toml"]
