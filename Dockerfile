# amtgw in a minimal image: one statically linked binary on an empty (scratch) base.
#
# Build it with the script, from the repository root:
#
#     scripts/container-build.sh
#
# It builds the static binary on the host (RUSTFLAGS="-C target-feature=+crt-static"
# OPENSSL_STATIC=1 cargo build --release --locked --target x86_64-unknown-linux-gnu --bin amtgw
# --no-default-features --features legacy-tls, into AMTGW_STATIC_TARGET_DIR, default
# target/static): without the `sim` feature, so the image carries no simulated device, no
# `amtgw demo` and no demo password; with the legacy TLS backend, Debian's OpenSSL linked in
# statically, for devices configured with tls_backend = "legacy". It stages the binary in a
# context directory holding only `amtgw` and .dockerignore, runs `podman build --isolation
# chroot -t amtgw:<version> -f Dockerfile <context>` and checks that `amtgw --version` runs in
# the image. The build context must contain the static binary named `amtgw`: no Rust toolchain
# or base image is pulled from a registry.
#
# Run it with the configuration (and any CA file, client certificate and key it names) mounted
# read-only; nothing secret is baked into the image:
#
#     podman run -d --name amtgw \
#         --sysctl net.ipv4.ip_unprivileged_port_start=0 \
#         -v /etc/amtgw:/etc/amtgw:ro \
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
FROM scratch

COPY amtgw /amtgw

# Unprivileged, numeric (there is no /etc/passwd in the image). The mounted config and key
# files must be readable by uid or gid 65532.
USER 65532:65532

# Legacy plain-TCP ports consoles connect to: 16992 WS-Man, 16994 redirection, 623 DASH;
# 9716 the admin listener (/metrics /healthz /readyz).
EXPOSE 16992/tcp 16994/tcp 623/tcp 9716/tcp

ENTRYPOINT ["/amtgw"]
CMD ["run", "--config", "/etc/amtgw/amtgw.toml"]
