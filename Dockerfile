# The three images of quiesce, one target each:
#
#   docker build --target operator -t REGISTRY/quiesce-operator:TAG .
#   docker build --target sidecar  -t REGISTRY/quiesce-sidecar:TAG .
#   docker build --target engine   -t REGISTRY/quiesce-engine:TAG .
#
# Every binary is linked statically (-C target-feature=+crt-static): the
# sidecar copies itself into the pod's shared volume and the engine
# container runs that copy as its preStop hook, in whatever image the
# engine has; the others are static so that all three share one base with
# no libc. hack/build-images.sh builds the same images without a Docker
# engine, and hack/check-images.py proves both give the same entrypoint
# and user (docs/install.md).

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# --target keeps the static flag off build scripts and proc macros.
RUN target="$(rustc -vV | sed -n 's/^host: //p')" && \
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
        --target "$target" -p quiesce-operator -p quiesce-sidecar -p quiesce-sim && \
    mkdir /out && \
    cp "target/$target/release/quiesce-operator" "target/$target/release/quiesce-sidecar" \
        "target/$target/release/quiesce-engine" /out/

FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=build /out/quiesce-operator /quiesce-operator
USER 65532:65532
ENTRYPOINT ["/quiesce-operator"]

FROM gcr.io/distroless/static-debian12:nonroot AS sidecar
COPY --from=build /out/quiesce-sidecar /quiesce-sidecar
USER 65532:65532
ENTRYPOINT ["/quiesce-sidecar"]

FROM gcr.io/distroless/static-debian12:nonroot AS engine
COPY --from=build /out/quiesce-engine /quiesce-engine
USER 65532:65532
ENTRYPOINT ["/quiesce-engine"]
