# pgfailover container image. Build:  docker build -t pgfailover:0.1.0 .
# Run:    docker run -p 6432:6432 -p 127.0.0.1:9432:9432 -v $PWD/proxy.toml:/etc/pgfailover/proxy.toml:ro \
#           -v $PWD/secrets:/run/secrets/pgfailover:ro -e DB_PASSWORD_FILE=/run/secrets/pgfailover/db-password \
#           -e PGFAILOVER_ADMIN_TOKEN_FILE=/run/secrets/pgfailover/admin-token pgfailover:0.1.0
#         (secret files mode 0600 or 0400, owned by uid 10001; the admin port on the host's
#         loopback only, or set admin_read_token: README, Security)
# Config: /etc/pgfailover/proxy.toml (mount your own); every key can also come from the
#         environment (DB_HOST, DB_PASSWORD, PGFAILOVER_STANDBYS, PGFAILOVER_ADMIN_TOKEN, ...).
# State:  /var/lib/pgfailover/state, created 0700 by pgfailover (history journal, lock, takeover
#         socket); mount a volume at /var/lib/pgfailover to keep fences across restarts.

FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config protobuf-compiler libprotobuf-dev && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin pgfailover && strip target/release/pgfailover

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="pgfailover" \
      org.opencontainers.image.ref.name="pgfailover:0.1.0" \
      org.opencontainers.image.description="PostgreSQL failover proxy"
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/pgfailover --create-home pgfailover \
    && chmod 0700 /var/lib/pgfailover \
    && mkdir -p /etc/pgfailover
COPY --from=build /src/target/release/pgfailover /usr/local/bin/pgfailover
COPY deploy/compose/proxy.toml /etc/pgfailover/proxy.toml
USER 10001:10001
ENV PGFAILOVER_LISTEN=0.0.0.0:6432 \
    PGFAILOVER_ADMIN_LISTEN=0.0.0.0:9432 \
    PGFAILOVER_STATE_DIR=/var/lib/pgfailover/state \
    PGFAILOVER_LOG_FORMAT=json
EXPOSE 6432 9432
VOLUME ["/var/lib/pgfailover"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["pgfailover", "health", "--admin", "http://127.0.0.1:9432"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgfailover"]
CMD ["--config", "/etc/pgfailover/proxy.toml"]
