# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p cairn-node --locked \
 && cp target/release/cairn /usr/local/bin/cairn

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /data --create-home cairn
COPY --from=build /usr/local/bin/cairn /usr/local/bin/cairn
USER cairn
WORKDIR /data
VOLUME /data
EXPOSE 7777
ENTRYPOINT ["cairn"]
CMD ["serve", "--bind", "0.0.0.0:7777", "--data-dir", "/data"]
