# Multi-stage build: a static-ish binary (glibc only) on a distroless base, running as nonroot.
#   docker build -t tokenmeter:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/tokenmeter

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tokenmeter /usr/bin/tokenmeter
COPY config/tokenmeter.toml /etc/tokenmeter/tokenmeter.toml
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/bin/tokenmeter"]
CMD ["run", "--config", "/etc/tokenmeter/tokenmeter.toml"]
