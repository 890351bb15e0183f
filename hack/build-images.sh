#!/usr/bin/env bash
# Builds the images of quiesce without a Docker engine: quiesce-operator,
# quiesce-sidecar and quiesce-engine (the simulated engine), each one static
# release binary at /NAME as the entrypoint, user 65532:65532, like the
# Dockerfile's stages.
#
#   hack/build-images.sh            OCI archives in target/images/NAME.oci.tar
#   hack/build-images.sh --import   ... and imports them into the containerd
#                                   of the local cluster kit (needs root)
#
# Environment:
#   IMAGE_PREFIX      registry and path of the names (default ghcr.io/quiesce-dev,
#                     the chart's and the examples' defaults)
#   IMAGE_TAG         tag (default: the chart's appVersion)
#   REAL_CLUSTER_DIR  the installed kit (default /opt/realcluster), whose
#                     make-image.sh writes the image layout
#
# Push an archive with `skopeo copy oci-archive:target/images/quiesce-sidecar.oci.tar
# docker://REGISTRY/quiesce-sidecar:TAG`, or load it into kind with
# `kind load image-archive`. docs/install.md has the details.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "build-images: $*" >&2; exit 1; }

import=0
case "${1:-}" in
    --import) import=1 ;;
    "") ;;
    *) fail "usage: $0 [--import]" ;;
esac

kit=${REAL_CLUSTER_DIR:-/opt/realcluster}
[[ -x "$kit/make-image.sh" ]] ||
    fail "no $kit/make-image.sh: install the cluster kit (../shared/cluster/install.sh), set REAL_CLUSTER_DIR, or build with the Dockerfile"
prefix=${IMAGE_PREFIX:-ghcr.io/quiesce-dev}
tag=${IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/quiesce/Chart.yaml)}
[[ -n "$tag" ]] || fail "no appVersion in charts/quiesce/Chart.yaml: set IMAGE_TAG"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)

# The same flags and target as hack/check-static-sidecar.sh, so that the two
# share one build.
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$host" \
    -p quiesce-operator -p quiesce-sidecar -p quiesce-sim

out=target/images
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
archives=()
for name in quiesce-operator quiesce-sidecar quiesce-engine; do
    binary="target/$host/release/$name"
    if readelf --program-headers "$binary" | grep -q INTERP; then
        fail "$binary is not static"
    fi
    ref="$prefix/$name:$tag"
    NO_IMPORT=1 OUT_TAR="$work/$name.tar" "$kit/make-image.sh" "$ref" "$binary" >/dev/null
    python3 hack/images.py finish "$work/$name.tar" "$out/$name.oci.tar" \
        --user 65532:65532 \
        --label "org.opencontainers.image.title=$name" \
        --label "org.opencontainers.image.version=$tag" \
        --label "org.opencontainers.image.revision=$revision" \
        --label "org.opencontainers.image.source=https://github.com/quiesce-dev/quiesce"
    archives+=("$out/$name.oci.tar")
done
python3 hack/images.py check Dockerfile "${archives[@]}"

if [[ $import = 1 ]]; then
    sock=/run/containerd/containerd.sock
    [[ -S $sock ]] || fail "no containerd at $sock: start the kit's node first ($kit/start-node.sh)"
    for name in quiesce-operator quiesce-sidecar quiesce-engine; do
        ref="$prefix/$name:$tag"
        # make-image.sh normalises a name without a registry host, as the CRI does.
        [[ ${ref%%/*} == *.* || ${ref%%/*} == *:* || ${ref%%/*} == localhost ]] ||
            fail "IMAGE_PREFIX $prefix has no registry host: use e.g. localhost/quiesce"
        # Right after containerd starts its CRI plugin may list a fresh
        # import late, and now and then not at all: wait, then import again.
        listed=0
        for _ in 1 2 3; do
            ctr --address "$sock" -n k8s.io images import "$out/$name.oci.tar" >/dev/null
            for _ in $(seq 40); do
                if ctr --address "$sock" -n k8s.io images ls -q | grep -qxF "$ref"; then
                    listed=1
                    break 2
                fi
                sleep 0.25
            done
        done
        [[ $listed == 1 ]] || fail "$ref is not listed in containerd after three imports"
        echo "build-images: imported $ref"
    done
fi
