# syntax=docker/dockerfile:1
#
# kube-stepup image: /stepup runs both processes (`stepup webhook`, `stepup controller`);
# /kubectl-stepup is the kubectl plugin, for jobs that use it (`kubectl stepup check` in CI).
#
#   docker build -t <registry>/kube-stepup/stepup:<version> .
#
# Two stages: a Rust builder, then a scratch runtime holding only the binaries, the C
# libraries they link (glibc, libgcc_s: read from ldd, so the runtime always matches the
# builder), CA certificates and a passwd entry for the non-root user. No shell, no package
# manager. The chart runs it as UID/GID 65532 with a read-only root filesystem.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# .dockerignore admits only what the build needs (sources, manifests, lockfile).
COPY . .
# Cache mounts keep the registry and target directory between builds (BuildKit); the
# binaries are copied out of the cached target directory, which is not part of the layer.
# Debug info is stripped; symbols stay, so panics still name their functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked --bin stepup --bin kubectl-stepup \
 && mkdir -p /out \
 && cp target/release/stepup target/release/kubectl-stepup /out/

# The runtime's root filesystem: shared libraries (with their directory layout, the dynamic
# loader included), CA certificates and the nonroot user.
RUN set -eu; \
    mkdir -p /rootfs/etc/ssl/certs; \
    for lib in $(ldd /out/stepup /out/kubectl-stepup | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u); do \
        cp --parents -L "$lib" /rootfs/; \
    done; \
    cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/; \
    echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' > /rootfs/etc/passwd; \
    echo 'nonroot:x:65532:' > /rootfs/etc/group; \
    /out/stepup --version

FROM scratch
COPY --from=builder /rootfs/ /
COPY --from=builder /out/stepup /stepup
COPY --from=builder /out/kubectl-stepup /kubectl-stepup
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/stepup"]
CMD ["--help"]
