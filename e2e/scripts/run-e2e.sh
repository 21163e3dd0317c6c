#!/usr/bin/env bash
# Runs the e2e scenarios from scratch: a fresh control plane, stepup's processes, then the
# `stepup-e2e` test crate one scenario at a time (they share cluster-wide policies). Tears
# everything down afterwards unless STEPUP_E2E_KEEP=1; prints the logs when a scenario fails.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)

teardown() {
	local rc=$?
	if [[ $rc -ne 0 ]]; then
		echo "e2e: FAILED (exit $rc); logs follow" >&2
		"$SCRIPT_DIR/stepup.sh" logs webhook 60 >&2 || true
		"$SCRIPT_DIR/stepup.sh" logs controller 60 >&2 || true
		"$SCRIPT_DIR/cluster.sh" logs kube-apiserver 40 >&2 || true
	fi
	if [[ ${STEPUP_E2E_KEEP:-0} != 1 ]]; then
		"$SCRIPT_DIR/stepup.sh" down >/dev/null 2>&1 || true
		"$SCRIPT_DIR/cluster.sh" down >/dev/null 2>&1 || true
	fi
	exit "$rc"
}
trap teardown EXIT

start=$SECONDS
"$SCRIPT_DIR/cluster.sh" down >/dev/null 2>&1 || true
"$SCRIPT_DIR/cluster.sh" up
"$SCRIPT_DIR/stepup.sh" up
# The release the packaging scenarios install is rebuilt from this checkout.
rm -rf "$(dirname "$("$SCRIPT_DIR/cluster.sh" env-file)")/dist"
echo "e2e: control plane and stepup up after $((SECONDS - start))s" >&2
cd "$REPO"
cargo test -p stepup-e2e --no-fail-fast -- --test-threads=1 "$@"
# Last, once every scenario has run: every audit line the processes wrote matches the schema.
cargo test -p stepup-e2e --test report -- --test-threads=1 every_audit_line_written_matches_the_published_schema
echo "e2e: passed in $((SECONDS - start))s" >&2
