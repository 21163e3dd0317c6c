#!/usr/bin/env bash
# Parses every PromQL query of a Grafana dashboard with promtool, Grafana's interval variables
# ($__rate_interval, $__range, ...) standing in as 5m, so a typo fails `make lint`, not a panel.
#
# Usage: hack/check-dashboard-queries.sh <dashboard.json>
# Environment: PROMTOOL, the promtool binary [the one hack/build-promtool.sh builds].
set -euo pipefail

DASHBOARD=${1:?usage: $0 <dashboard.json>}
PROMTOOL=${PROMTOOL:-$("$(dirname "${BASH_SOURCE[0]}")/build-promtool.sh")}

# The dashboard is written one key per line (indented JSON); queries hold no backslash but \".
mapfile -t queries < <(sed -n 's/^ *"expr": "\(.*\)",\{0,1\}$/\1/p' "$DASHBOARD" | sed 's/\\"/"/g; s/\$__[a-z_]*/5m/g')
((${#queries[@]} > 0)) || { echo "no queries found in $DASHBOARD" >&2; exit 1; }
for query in "${queries[@]}"; do
	"$PROMTOOL" --experimental promql format "$query" >/dev/null \
		|| { echo "a query in $DASHBOARD does not parse: $query" >&2; exit 1; }
done
echo "$DASHBOARD: ${#queries[@]} queries parse" >&2
