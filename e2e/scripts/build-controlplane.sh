#!/usr/bin/env bash
# Builds kube-apiserver, kubectl, etcd and helm from the pinned Go modules in
# e2e/controlplane into a cache directory outside the repository:
#
#   ${STEPUP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup}/controlplane/<key>/bin
#
# <key> is a short hash of the pinned go.mod/go.sum files and of the build recipe,
# so changing a pinned version builds into a new directory. When all four binaries
# are already there nothing is built.
#
# Usage: build-controlplane.sh [--print-bin-dir]
#   --print-bin-dir  print the bin directory for the current pins and exit (no build)
# On success the bin directory is the only thing printed on stdout; progress goes to stderr.
#
# Environment: STEPUP_CACHE, STEPUP_BUILD_JOBS (go build -p, default: number of CPUs).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CP_DIR=$(cd "$SCRIPT_DIR/../controlplane" && pwd)
HELM_DIR=$CP_DIR/helm
CACHE_ROOT=${STEPUP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup}
BINARIES=(kube-apiserver kubectl etcd helm)
# Bump when the way the binaries are built changes (flags, ldflags), to get a new key.
RECIPE=1

log() { echo "build-controlplane: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The version a go.mod requires for module $2 (file $1).
pinned_version() {
	awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$1"
}

KUBE_VERSION=$(pinned_version "$CP_DIR/go.mod" k8s.io/kubernetes)
ETCD_VERSION=$(pinned_version "$CP_DIR/go.mod" go.etcd.io/etcd/server/v3)
HELM_VERSION=$(pinned_version "$HELM_DIR/go.mod" helm.sh/helm/v3)
[[ -n $KUBE_VERSION && -n $ETCD_VERSION && -n $HELM_VERSION ]] || die "cannot read pinned versions from $CP_DIR"

cache_key() {
	{
		echo "recipe=$RECIPE"
		cat "$CP_DIR/go.mod" "$CP_DIR/go.sum" "$HELM_DIR/go.mod" "$HELM_DIR/go.sum"
	} | sha256sum | cut -c1-12
}

KEY_DIR=$CACHE_ROOT/controlplane/$(cache_key)
BIN_DIR=$KEY_DIR/bin

all_built() {
	local b
	for b in "${BINARIES[@]}"; do
		[[ -x $BIN_DIR/$b ]] || return 1
	done
}

# -X flags that make kubectl version and the discovery /version endpoint report
# the real release (Helm compares charts' kubeVersion against it). Kubernetes'
# hack/lib/version.sh sets the same variables in both packages.
kube_ldflags() {
	local minor=${KUBE_VERSION#v1.}
	minor=${minor%%.*}
	local flags="-s -w" pkg
	for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
		flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		flags+=" -X $pkg.gitTreeState=clean"
	done
	echo "$flags"
}

helm_ldflags() {
	local kube_minor=${KUBE_VERSION#v1.}
	kube_minor=${kube_minor%%.*}
	local flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
	flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
	# Default Capabilities.KubeVersion for `helm template` / lint (no cluster).
	flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
	flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kube_minor"
	flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
	flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kube_minor"
	echo "$flags"
}

go_build() { # <module dir> <ldflags> <output> <packages...>
	local dir=$1 ldflags=$2 out=$3
	shift 3
	(cd "$dir" && CGO_ENABLED=0 go build -mod=readonly -trimpath -buildvcs=false \
		-p "${STEPUP_BUILD_JOBS:-$(nproc)}" -ldflags "$ldflags" -o "$out" "$@")
}

build_all() {
	local tmp=$KEY_DIR/tmp.$$
	rm -rf "$tmp"
	mkdir -p "$tmp"
	# shellcheck disable=SC2064 # expand $tmp now
	trap "rm -rf '$tmp'" EXIT

	log "building kube-apiserver, kubectl $KUBE_VERSION and etcd $ETCD_VERSION (this takes a while on a cold cache)"
	# One invocation so the packages the three binaries share compile once. With -o <dir>/
	# each main package lands in <dir>, named after its path: etcd's is ".../server/v3" -> "server".
	go_build "$CP_DIR" "$(kube_ldflags)" "$tmp/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3
	mv "$tmp/server" "$tmp/etcd"

	log "building helm $HELM_VERSION"
	go_build "$HELM_DIR" "$(helm_ldflags)" "$tmp/helm" helm.sh/helm/v3/cmd/helm

	mkdir -p "$BIN_DIR"
	local b
	for b in "${BINARIES[@]}"; do
		mv -f "$tmp/$b" "$BIN_DIR/$b"
	done
}

main() {
	if [[ ${1:-} == --print-bin-dir ]]; then
		echo "$BIN_DIR"
		return
	fi
	command -v go >/dev/null || die "go is not on PATH"

	if ! all_built; then
		mkdir -p "$KEY_DIR"
		# Serialise concurrent builds of the same key; the second one then finds the binaries.
		exec 9>"$KEY_DIR/.lock"
		if command -v flock >/dev/null; then flock 9; fi
		if ! all_built; then
			local start=$SECONDS
			build_all
			log "built in $((SECONDS - start))s"
		fi
	fi
	log "binaries (kube $KUBE_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION) are in $BIN_DIR"
	echo "$BIN_DIR"
}

main "$@"
