#!/usr/bin/env bash
# Builds promtool from the pinned Go module in hack/promtool into a cache directory outside
# the repository, the way e2e/scripts/build-controlplane.sh builds the control plane:
#
#   ${STEPUP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup}/promtool/<key>/bin/promtool
#
# <key> is a short hash of hack/promtool/go.mod, go.sum and of the build recipe, so changing
# the pinned version builds into a new directory. When the binary is already there nothing
# is built.
#
# Usage: build-promtool.sh [--print-path]
#   --print-path  print the binary's path for the current pins and exit (no build)
# On success the binary's path is the only thing printed on stdout; progress goes to stderr.
#
# Environment: STEPUP_CACHE, STEPUP_BUILD_JOBS (go build -p, default: number of CPUs).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MOD_DIR=$SCRIPT_DIR/promtool
CACHE_ROOT=${STEPUP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup}
# Bump when the way the binary is built changes (flags, tags, ldflags), to get a new key.
RECIPE=1
# Rule checks need no service discovery: leaving every SD plugin out (Prometheus' own build
# tag) drops the cloud SDKs and the Kubernetes client from the build.
TAGS=remove_all_sd

log() { echo "build-promtool: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PROM_VERSION=$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" { print $3; exit }' "$MOD_DIR/go.mod")
[[ $PROM_VERSION =~ ^v0\.([0-9]+)\.([0-9]+)$ ]] || die "cannot read the pinned Prometheus version from $MOD_DIR/go.mod"
# The Go module v0.MMM.P is Prometheus release (MMM / 100).(MMM % 100).P, e.g. v0.316.0 is 3.16.0.
RELEASE=$((BASH_REMATCH[1] / 100)).$((BASH_REMATCH[1] % 100)).${BASH_REMATCH[2]}

cache_key() {
	{
		echo "recipe=$RECIPE tags=$TAGS"
		cat "$MOD_DIR/go.mod" "$MOD_DIR/go.sum"
	} | sha256sum | cut -c1-12
}

KEY_DIR=$CACHE_ROOT/promtool/$(cache_key)
BIN=$KEY_DIR/bin/promtool

build() {
	local tmp=$KEY_DIR/tmp.$$
	rm -rf "$tmp"
	mkdir -p "$tmp"
	# shellcheck disable=SC2064 # expand $tmp now
	trap "rm -rf '$tmp'" EXIT
	log "building promtool $RELEASE (module $PROM_VERSION; takes a while on a cold cache)"
	(cd "$MOD_DIR" && CGO_ENABLED=0 go build -mod=readonly -trimpath -buildvcs=false -tags "$TAGS" \
		-p "${STEPUP_BUILD_JOBS:-$(nproc)}" \
		-ldflags "-s -w -X github.com/prometheus/common/version.Version=$RELEASE" \
		-o "$tmp/promtool" github.com/prometheus/prometheus/cmd/promtool)
	mkdir -p "$(dirname "$BIN")"
	mv -f "$tmp/promtool" "$BIN"
}

main() {
	if [[ ${1:-} == --print-path ]]; then
		echo "$BIN"
		return
	fi
	command -v go >/dev/null || die "go is not on PATH"
	if [[ ! -x $BIN ]]; then
		mkdir -p "$KEY_DIR"
		# Serialise concurrent builds of the same key; the second one then finds the binary.
		exec 9>"$KEY_DIR/.lock"
		if command -v flock >/dev/null; then flock 9; fi
		if [[ ! -x $BIN ]]; then
			local start=$SECONDS
			build
			log "built in $((SECONDS - start))s"
		fi
	fi
	echo "$BIN"
}

main "$@"
