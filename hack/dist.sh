#!/usr/bin/env bash
# Builds the release a platform team installs, into dist/ (or --out DIR):
#
#   stepup_v<v>_linux_amd64.tar.gz         stepup (webhook, controller, crdgen, keygen), LICENSE, README, CHANGELOG
#   kubectl-stepup_v<v>_linux_amd64.tar.gz kubectl-stepup, kubectl_complete-stepup, LICENSE
#   stepup-<chart version>.tgz             the Helm chart, packaged
#   stepup.yaml                            the krew manifest, filled in with the archives' sha256
#   kube-stepup_<v>.cdx.json               CycloneDX SBOM of the servers' Rust dependency graph (cargo-cyclonedx)
#   kubectl-stepup_<v>.cdx.json            the same of the plugin's
#   RELEASE_NOTES.md                       the CHANGELOG section of this version (or Unreleased)
#   SHA256SUMS                             sha256 of every file above
#
# Not built here: linux/arm64 and macOS binaries (no cross toolchain on this machine kind; the
# krew manifest lists only the platforms built) and the container image (no Docker engine:
# build the Dockerfile where one runs).
#
# Usage: hack/dist.sh [--profile release|dev] [--out DIR]
#   release (default): optimized, statically linked (glibc static-pie) binaries
#   dev: packages the debug binaries as they are, for tests of the packaging itself
# Environment: STEPUP_RELEASE_URL (where the archives will be downloaded from), STEPUP_HOMEPAGE,
#   HELM, STEPUP_CACHE (tools are built once and kept there), CARGO_TARGET_DIR.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${STEPUP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
PROFILE=release
OUT=$REPO/dist
while (($#)); do
	case $1 in
	--profile) PROFILE=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	*) echo "usage: $0 [--profile release|dev] [--out DIR]" >&2; exit 2 ;;
	esac
done
[[ $PROFILE == release || $PROFILE == dev ]] || { echo "dist: --profile is release or dev" >&2; exit 2; }

log() { echo "dist: $*" >&2; }
VERSION=$(awk -F'"' '/^version = / { print $2; exit }' "$REPO/Cargo.toml")
CHART_VERSION=$(awk '/^version:/ { print $2; exit }' "$REPO/charts/stepup/Chart.yaml")
RELEASE_URL=${STEPUP_RELEASE_URL:-https://github.com/kube-stepup/kube-stepup/releases/download/v$VERSION}
HOMEPAGE=${STEPUP_HOMEPAGE:-https://github.com/kube-stepup/kube-stepup}
PLATFORM=linux_amd64
if [[ -z ${HELM:-} ]]; then
	HELM=$("$REPO/e2e/scripts/build-controlplane.sh")/helm
fi

rm -rf "$OUT"
mkdir -p "$OUT"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# ---------------------------------------------------------------- binaries
if [[ $PROFILE == release ]]; then
	log "building static release binaries (x86_64 Linux)"
	# glibc's static libraries link a static-pie; nothing is loaded at run time.
	(cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
		cargo build --quiet --locked --release --target x86_64-unknown-linux-gnu --bin stepup --bin kubectl-stepup)
	bin=$TARGET_DIR/x86_64-unknown-linux-gnu/release
else
	(cd "$REPO" && cargo build --quiet --locked --bin stepup --bin kubectl-stepup)
	bin=$TARGET_DIR/debug
fi
for b in stepup kubectl-stepup; do
	"$bin/$b" --version >/dev/null
done

pack() { # archive files...
	local archive=$1 compress="gzip -9"
	shift
	# Debug binaries are big and only tested: compress them fast.
	[[ $PROFILE == dev ]] && compress="gzip -1"
	tar -C "$stage" --owner=0 --group=0 --numeric-owner --use-compress-program="$compress" -cf "$OUT/$archive" "$@"
}
cp "$bin/stepup" "$bin/kubectl-stepup" "$REPO/krew/kubectl_complete-stepup" "$REPO/LICENSE" \
	"$REPO/README.md" "$REPO/CHANGELOG.md" "$stage/"
pack "stepup_v${VERSION}_${PLATFORM}.tar.gz" stepup LICENSE README.md CHANGELOG.md
pack "kubectl-stepup_v${VERSION}_${PLATFORM}.tar.gz" kubectl-stepup kubectl_complete-stepup LICENSE

# ---------------------------------------------------------------- chart and krew manifest
"$HELM" package "$REPO/charts/stepup" --destination "$OUT" >/dev/null
[[ -f $OUT/stepup-$CHART_VERSION.tgz ]] || { log "helm package wrote no stepup-$CHART_VERSION.tgz"; exit 1; }
STEPUP_KREW_PLATFORMS=$PLATFORM "$REPO/krew/render.sh" "v$VERSION" "$RELEASE_URL" "$HOMEPAGE" "$OUT" >"$OUT/stepup.yaml"

# ---------------------------------------------------------------- SBOM
CYCLONEDX_VERSION=0.5.9
tools=$CACHE/tools/cargo-cyclonedx-$CYCLONEDX_VERSION
if [[ ! -x $tools/bin/cargo-cyclonedx ]]; then
	log "building cargo-cyclonedx $CYCLONEDX_VERSION into $tools (once)"
	cargo install --quiet --locked --root "$tools" --version "$CYCLONEDX_VERSION" cargo-cyclonedx
fi
(cd "$REPO" && PATH="$tools/bin:$PATH" cargo cyclonedx --format json --spec-version 1.5 \
	--target x86_64-unknown-linux-gnu --override-filename "kube-stepup.cdx" >/dev/null 2>&1) ||
	{ log "cargo cyclonedx failed"; exit 1; }
mv "$REPO/kube-stepup.cdx.json" "$OUT/kube-stepup_${VERSION}.cdx.json"
mv "$REPO/plugin/kube-stepup.cdx.json" "$OUT/kubectl-stepup_${VERSION}.cdx.json"
# cargo cyclonedx writes one file per workspace member; the servers' and the plugin's are the
# release's (the core and the HTTPS client are in both), the rest is removed.
rm -f "$REPO"/e2e/*.cdx.json "$REPO"/core/*.cdx.json "$REPO"/http/*.cdx.json

# ---------------------------------------------------------------- notes and sums
awk -v v="$VERSION" '
	/^## \[/ { if (found) exit; if (index($0, "[" v "]") || index($0, "[Unreleased]")) { found = 1 } }
	found { print }
' "$REPO/CHANGELOG.md" >"$OUT/RELEASE_NOTES.md"
[[ -s $OUT/RELEASE_NOTES.md ]] || { log "CHANGELOG.md has no section for $VERSION or Unreleased"; exit 1; }
(cd "$OUT" && sha256sum -- * | grep -v ' SHA256SUMS$' >SHA256SUMS)

log "wrote $OUT:"
(cd "$OUT" && ls -l) >&2
log "not built here: linux/arm64 and macOS binaries (no cross toolchain), the container image (no Docker engine)"
