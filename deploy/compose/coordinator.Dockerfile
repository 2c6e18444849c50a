# The coordinator's image for deploy/compose/compose.yaml, built from this repository:
#   docker build -f deploy/compose/coordinator.Dockerfile -t manifold-coordinator:local .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin manifold-coordinator

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 7700 --home-dir /var/lib/manifold manifold \
    && mkdir -p /var/lib/manifold && chown manifold:manifold /var/lib/manifold
COPY --from=build /src/target/release/manifold-coordinator /usr/local/bin/manifold-coordinator
USER manifold
VOLUME /var/lib/manifold
EXPOSE 7700 9700
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/manifold-coordinator"]
