#!/usr/bin/env bash
# The cluster suite on the local single-node Kubernetes of the cluster kit,
# as CI runs it (docs/e2e.md):
#
#   1. install the kit (Debian packages, Kubernetes 1.32 binaries, certificates);
#   2. start a fresh cluster: etcd, apiserver, controller-manager, scheduler,
#      containerd, kubelet, kube-proxy;
#   3. build the images (hack/build-images.sh) and import them into containerd;
#   4. install helm (hack/install-helm.sh) and run every scenario of
#      quiesce-cluster, which prints a table of results and figures;
#   5. stop the cluster, and fail if any daemon, shim, netns or veth is left.
#
#   hack/cluster-e2e.sh [quiesce-cluster flags, e.g. --only rollout]
#
# The kit needs root. Without root or without the kit the suite is skipped
# with a message and exit 0, unless QUIESCE_E2E_REQUIRED=1 (CI), where that,
# like a cluster that cannot start, is a failure. To run the suite against
# another cluster (kind, your own), see docs/e2e.md.
#
# Environment: QUIESCE_CLUSTER_KIT (default ../shared/cluster beside the
# checkout), REAL_CLUSTER_DIR (where the kit is installed, default
# /opt/realcluster), IMAGE_PREFIX and IMAGE_TAG (as for build-images.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

step() { printf '\n--> cluster-e2e: %s\n' "$*"; }
fail() { echo "cluster-e2e: $*" >&2; exit 1; }
skip() {
    if [[ ${QUIESCE_E2E_REQUIRED:-0} == 1 ]]; then
        fail "$* (QUIESCE_E2E_REQUIRED=1: the cluster suite must run)"
    fi
    echo "cluster-e2e: SKIPPED: $*"
    exit 0
}

kit=${QUIESCE_CLUSTER_KIT:-$repo/../shared/cluster}
[[ -x $kit/install.sh ]] || skip "no cluster kit at $kit (set QUIESCE_CLUSTER_KIT)"
[[ $(id -u) == 0 ]] || skip "the cluster kit needs root (containerd, kubelet, iptables)"
export REAL_CLUSTER_DIR=${REAL_CLUSTER_DIR:-/opt/realcluster}
cluster=$REAL_CLUSTER_DIR

step "install the kit"
"$kit/install.sh"

stop() {
    step "stop the cluster"
    "$cluster/stop-node.sh" || true
    "$cluster/stop-cluster.sh" || true
    if ! "$cluster/check-stopped.sh"; then
        echo "cluster-e2e: the cluster left processes or interfaces behind" >&2
        return 1
    fi
}
# Whatever ran before, start from nothing: start-cluster.sh wipes etcd.
"$cluster/stop-node.sh" >/dev/null
"$cluster/stop-cluster.sh" >/dev/null
trap 'status=$?; stop || status=1; exit $status' EXIT

step "start a fresh cluster"
"$cluster/start-cluster.sh" || fail "the control plane did not start (logs in $cluster/logs)"
"$cluster/start-node.sh" || fail "the node did not start (logs in $cluster/logs)"
export KUBECONFIG=$cluster/kubeconfig

step "build and import the images"
hack/build-images.sh --import

step "helm"
tools=$(hack/install-helm.sh)

step "build the suite"
cargo build --locked -p quiesce-e2e --bin quiesce-cluster
started=$(date +%s)
step "run the suite"
HELM=$tools/helm KUBECTL=$tools/kubectl \
    target/debug/quiesce-cluster --json target/cluster-e2e.json "$@"
echo "cluster-e2e: the suite ran in $(($(date +%s) - started)) s; results in target/cluster-e2e.json"
