#!/usr/bin/env bash
# Builds krew from the pinned Go module in e2e/controlplane/krew into a cache directory
# outside the repository, keyed by a hash of the pins; prints the binary's path.
# The e2e tests install the plugin through it from the release archive (hack/dist.sh).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MOD_DIR=$(cd "$SCRIPT_DIR/../controlplane/krew" && pwd)
CACHE_ROOT=${STEPUP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup}
key=$(cat "$MOD_DIR/go.mod" "$MOD_DIR/go.sum" | sha256sum | cut -c1-12)
bin=$CACHE_ROOT/tools/krew-$key/krew
if [[ ! -x $bin ]]; then
	echo "build-krew: building krew into $(dirname "$bin")" >&2
	mkdir -p "$(dirname "$bin")"
	(cd "$MOD_DIR" && CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" sigs.k8s.io/krew/cmd/krew)
	mv "$bin.tmp" "$bin"
fi
echo "$bin"
