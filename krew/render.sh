#!/usr/bin/env bash
# Fills in krew/stepup.yaml for a release: version, download URLs and the sha256 of each
# platform's archive. Prints the finished manifest on stdout.
#
# Usage: krew/render.sh VERSION BASE_URL HOMEPAGE DIST_DIR
#   DIST_DIR holds kubectl-stepup_<VERSION>_<os>_<arch>.tar.gz for every platform of the
#   template, each containing the kubectl-stepup binary and LICENSE at its root.
set -euo pipefail

[[ $# -eq 4 ]] || { echo "usage: $0 VERSION BASE_URL HOMEPAGE DIST_DIR" >&2; exit 2; }
version=$1 base_url=${2%/} homepage=$3 dist=$4
template="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/stepup.yaml"

args=(-e "s#@VERSION@#$version#g" -e "s#@BASE_URL@#$base_url#g" -e "s#@HOMEPAGE@#$homepage#g")
for platform in linux_amd64 linux_arm64 darwin_amd64 darwin_arm64; do
	archive="$dist/kubectl-stepup_${version}_${platform}.tar.gz"
	[[ -f $archive ]] || { echo "missing $archive" >&2; exit 1; }
	for member in kubectl-stepup LICENSE; do
		tar -tzf "$archive" | grep -qx "\(\./\)\?$member" || { echo "$archive lacks $member" >&2; exit 1; }
	done
	sum=$(sha256sum "$archive" | cut -d' ' -f1)
	args+=(-e "s#@SHA256_${platform}@#$sum#g")
done

# Drop the template's header comment; fail if any placeholder is left.
out=$(sed "${args[@]}" "$template" | sed '/^# /,/^apiVersion:/{/^apiVersion:/!d}')
if grep -q '@[A-Za-z0-9_]*@' <<<"$out"; then
	echo "unfilled placeholders remain:" >&2
	grep -o '@[A-Za-z0-9_]*@' <<<"$out" | sort -u >&2
	exit 1
fi
printf '%s\n' "$out"
