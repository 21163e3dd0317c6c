#!/usr/bin/env bash
# Fills in krew/stepup.yaml for a release: version, download URLs and the sha256 of each
# platform's archive. Prints the finished manifest on stdout.
#
# Usage: krew/render.sh VERSION BASE_URL HOMEPAGE DIST_DIR
#   DIST_DIR holds kubectl-stepup_<VERSION>_<os>_<arch>.tar.gz for every platform listed in
#   STEPUP_KREW_PLATFORMS (default: all four of the template), each containing the
#   kubectl-stepup binary, kubectl_complete-stepup and LICENSE at its root. Platforms not
#   listed are left out of the manifest.
set -euo pipefail

[[ $# -eq 4 ]] || { echo "usage: $0 VERSION BASE_URL HOMEPAGE DIST_DIR" >&2; exit 2; }
version=$1 base_url=${2%/} homepage=$3 dist=$4
template="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/stepup.yaml"

args=(-e "s#@VERSION@#$version#g" -e "s#@BASE_URL@#$base_url#g" -e "s#@HOMEPAGE@#$homepage#g")
read -r -a platforms <<<"${STEPUP_KREW_PLATFORMS:-linux_amd64 linux_arm64 darwin_amd64 darwin_arm64}"
for platform in "${platforms[@]}"; do
	archive="$dist/kubectl-stepup_${version}_${platform}.tar.gz"
	[[ -f $archive ]] || { echo "missing $archive" >&2; exit 1; }
	listing=$(tar -tzf "$archive")
	for member in kubectl-stepup kubectl_complete-stepup LICENSE; do
		grep -qx "\(\./\)\?$member" <<<"$listing" || { echo "$archive lacks $member" >&2; exit 1; }
	done
	sum=$(sha256sum "$archive" | cut -d' ' -f1)
	args+=(-e "s#@SHA256_${platform}@#$sum#g")
done

# Keep only the listed platforms' entries (each starts at "  - selector:" and names its
# os and arch on the next line).
keep_platforms() {
	awk -v keep=" ${platforms[*]} " '
		/^  - selector:/ { block = $0; inblock = 1; next }
		inblock && /matchLabels:/ {
			match($0, /os: [a-z0-9]+/); os = substr($0, RSTART + 4, RLENGTH - 4)
			match($0, /arch: [a-z0-9]+/); arch = substr($0, RSTART + 6, RLENGTH - 6)
			skip = index(keep, " " os "_" arch " ") == 0
			if (!skip) print block
			inblock = 0
		}
		/^  [a-z]/ || /^[a-z]/ { skip = 0 }
		!skip { print }
	'
}

# Drop the template's header comment; fail if any placeholder is left.
out=$(keep_platforms <"$template" | sed "${args[@]}" | sed '/^# /,/^apiVersion:/{/^apiVersion:/!d}')
if grep -q '@[A-Za-z0-9_]*@' <<<"$out"; then
	echo "unfilled placeholders remain:" >&2
	grep -o '@[A-Za-z0-9_]*@' <<<"$out" | sort -u >&2
	exit 1
fi
printf '%s\n' "$out"
