# crowdsec-cloudflare-iplist-bouncer container image.
#
#   docker build -t crowdsec-cloudflare-iplist-bouncer .
#   docker run --rm --read-only \
#     -v /etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml:/etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml:ro \
#     -e CROWDSEC_API_KEY -e CLOUDFLARE_API_TOKEN \
#     crowdsec-cloudflare-iplist-bouncer
#
# No configuration or secret is baked in: mount the config (readable by uid 65532) and pass
# the secrets as files the config names (api_key_file, api_token_file) or as environment
# variables. For the probes and /metrics to be reachable from outside the container, set
# [admin] listen = "0.0.0.0:60620".
#
# Base images are pinned by digest, so a rebuild uses the bytes that were reviewed. To
# update one, look up the tag's current digest and replace the part after "@":
#   docker buildx imagetools inspect rust:1-bookworm          (or: crane digest rust:1-bookworm)
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# then rebuild and rerun the tests. Both build arguments can also name a stand-in image.
ARG BUILD_IMAGE=rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY crates ./crates
RUN cargo build --release --locked --bin crowdsec-cloudflare-iplist-bouncer

# glibc, libgcc and the CA certificates (/etc/ssl/certs), nothing else; no shell.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="crowdsec-cloudflare-iplist-bouncer" \
      org.opencontainers.image.description="CrowdSec bouncer keeping a Cloudflare account IP List in step with LAPI bans" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /src/target/release/crowdsec-cloudflare-iplist-bouncer /usr/local/bin/crowdsec-cloudflare-iplist-bouncer
# Numeric, so Kubernetes' runAsNonRoot can verify it (65532 is distroless' "nonroot").
USER 65532:65532
EXPOSE 60620
ENTRYPOINT ["/usr/local/bin/crowdsec-cloudflare-iplist-bouncer"]
CMD ["-c", "/etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml"]
