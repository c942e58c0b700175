# crowdsec-cloudflare-iplist-bouncer container image.
#
#   docker build -t crowdsec-cloudflare-iplist-bouncer .
#   docker run --rm \
#     -v /etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml:/etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml:ro \
#     -e CROWDSEC_API_KEY -e CLOUDFLARE_API_TOKEN \
#     crowdsec-cloudflare-iplist-bouncer
#
# No configuration or secret is baked in: mount the config (readable by uid 65532) and pass
# the secrets as environment variables or files the config names. For the probes and
# /metrics to be reachable from outside the container, set [admin] listen = "0.0.0.0:60620".

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY crates ./crates
RUN cargo build --release --locked --bin crowdsec-cloudflare-iplist-bouncer

# glibc, libgcc and the CA certificates (/etc/ssl/certs), nothing else; no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="crowdsec-cloudflare-iplist-bouncer" \
      org.opencontainers.image.description="CrowdSec bouncer keeping a Cloudflare account IP List in step with LAPI bans" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /src/target/release/crowdsec-cloudflare-iplist-bouncer /usr/local/bin/crowdsec-cloudflare-iplist-bouncer
# Numeric, so Kubernetes' runAsNonRoot can verify it (65532 is distroless' "nonroot").
USER 65532:65532
EXPOSE 60620
ENTRYPOINT ["/usr/local/bin/crowdsec-cloudflare-iplist-bouncer"]
CMD ["-c", "/etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml"]
