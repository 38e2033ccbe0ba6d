# amtgw in a minimal image: one statically linked binary on an empty (scratch) base, run as an
# unprivileged user, with a volume for the trust-on-first-use pin store.
#
# Build it from the repository root with any builder:
#
#     podman build -t amtgw .          (or: docker build -t amtgw .)
#
# The builder stage compiles the binary with scripts/build-static.sh inside the pinned Rust image
# (statically linked glibc and OpenSSL, for devices with tls_backend = "legacy"; without the
# `sim` feature, so the image carries no simulated device, no `amtgw demo` and no demo
# password). Where no registry is reachable, build the same binary on the host and let the
# `prebuilt` stage take it from a context directory holding `amtgw` and an empty `state/`:
#
#     scripts/container-build.sh       (podman build --isolation chroot
#                                       --build-arg AMTGW_BINARY=prebuilt; see the script)
#
# Either way the shipped stage (the last one) is the same, and that is the stage the test script
# builds and proves.
#
# Run it with the configuration (and any CA file, client certificate and key it names) mounted
# read-only, and a volume for the pin store; nothing secret is baked into the image:
#
#     podman run -d --name amtgw \
#         --sysctl net.ipv4.ip_unprivileged_port_start=0 \
#         -v /etc/amtgw:/etc/amtgw:ro -v amtgw-pins:/var/lib/amtgw \
#         -p 16992:16992 -p 16994:16994 -p 623:623 -p 127.0.0.1:9716:9716 \
#         amtgw:0.1.0
#
# `podman stop` (SIGTERM) drains open sessions and exits 0: /readyz turns 503, the listeners
# serve on for gateway.shutdown_delay (5 s; "0s" with no load balancer in front), then live
# sessions get gateway.shutdown_timeout (30 s). podman kills after 10 s unless told otherwise
# (`podman stop -t 40`).
#
# Inside a container 127.0.0.1 is the container's own loopback, so amtgw's default bind
# addresses are unreachable from outside. The mounted config must listen on all interfaces:
#
#     [admin]
#     listen = "0.0.0.0:9716"          # publish it on a trusted address only
#     token_file = "admin.token"       # required off loopback: repin and /devices need it
#     [services.wsman]
#     bind = ["0.0.0.0"]
#     [services.redirection]
#     bind = ["0.0.0.0"]
#     [services.dash]
#     bind = ["0.0.0.0"]
#
# (or AMTGW_SERVICES__WSMAN__BIND='["0.0.0.0"]' etc. in the environment). Per-device `listen`
# alias addresses only make sense with --network host.
#
# Port 623 (DASH) is privileged and the gateway runs as an unprivileged user. Podman does not
# lower net.ipv4.ip_unprivileged_port_start (tested: "cannot listen for dash on 0.0.0.0:623:
# Permission denied"), hence the --sysctl above, which is per container network namespace
# (Docker 20.10+ already sets it to 0). With --network host that sysctl is the host's: use
# --cap-add NET_BIND_SERVICE instead, or disable [services.dash].
#
# Host names of devices (`host = "amt-ws042.corp.example"`): the binary is static glibc, so
# glibc's NSS cannot dlopen any libnss_*.so, but glibc >= 2.34 has the "files" and "dns" modules
# built in, and the image has no /etc/nsswitch.conf, so glibc's default (dns, then files) applies.
# Tested with this binary, running as 65532, a device given by host name and a console request
# relayed end to end:
#   - in this image under podman: `host = "host.containers.internal"` (from the /etc/hosts
#     podman writes) and a name only a DNS server knew (`--dns <server>`) both resolved: works.
#   - in a chroot holding nothing but the binary: /etc/resolv.conf -> its nameserver is asked,
#     works; /etc/hosts -> its names resolve, works; neither file -> "Temporary failure in name
#     resolution" (glibc then asks a nameserver on 127.0.0.1).
# Podman and Docker bind-mount /etc/hosts and /etc/resolv.conf into every container (FROM
# scratch too), so device names resolve as on the host. Not available: anything needing an NSS
# plugin (mdns, sss, systemd-resolved's nss-resolve/myhostname, LDAP). Where a container
# gets no /etc/resolv.conf, only /etc/hosts names resolve: use IP addresses, or --add-host.
# The pin store: STATE_DIRECTORY (below) makes the default gateway.pin_store
# /var/lib/amtgw/amtgw-pins.toml, a volume owned by the image's user, so trust = "tofu" devices
# are learned and kept across restarts with the configuration mounted read-only. An explicit
# gateway.pin_store in the configuration wins. Mount a named volume (as above, created owned by
# 65532) or a host directory owned by 65532 there.
#
# Health: `amtgw health` (HEALTHCHECK below) asks the admin listener's /healthz at admin.listen
# from the configuration (over loopback when it binds 0.0.0.0). Podman keeps HEALTHCHECK only in
# the docker image format (`--format docker`, as scripts/container-build.sh builds); Kubernetes
# ignores it and uses the probes in deploy/kubernetes/.

# Pinned, so a rebuild is the same build; bump with the workspace's rust-version in mind.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
# Which stage supplies the binary: `builder` (compile here) or `prebuilt` (the context's amtgw).
ARG AMTGW_BINARY=builder

FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/build-static.sh /out

FROM scratch AS prebuilt
COPY amtgw /out/amtgw
COPY state /out/state

FROM ${AMTGW_BINARY} AS binary

# The shipped stage.
FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="amtgw" \
      org.opencontainers.image.description="TLS gateway for Intel AMT fleets: legacy plain-TCP consoles to TLS-only devices" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=binary /out/amtgw /amtgw
# /var/lib root-owned like any system's; only the state directory itself belongs to the user.
COPY --from=binary /out/state /var/lib
COPY --from=binary --chown=65532:65532 /out/state /var/lib/amtgw

# Unprivileged, numeric (there is no /etc/passwd in the image). The mounted config and key
# files must be readable by uid or gid 65532.
USER 65532:65532
ENV AMTGW_CONFIG=/etc/amtgw/amtgw.toml \
    STATE_DIRECTORY=/var/lib/amtgw
VOLUME /var/lib/amtgw

# Legacy plain-TCP ports consoles connect to: 16992 WS-Man, 16994 redirection, 623 DASH;
# 9716 the admin listener (/metrics /healthz /readyz).
EXPOSE 16992/tcp 16994/tcp 623/tcp 9716/tcp

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/amtgw", "health"]
ENTRYPOINT ["/amtgw"]
CMD ["run"]
