#!/usr/bin/env bash
# The local demo: a real control plane, stepup running against it, the example policies
# applied, and a production secret to try them on.
#
# Usage: demo.sh up|down
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)

cmd_up() {
	"$SCRIPT_DIR/cluster.sh" up
	"$SCRIPT_DIR/stepup.sh" up
	local env_dir
	env_dir=$(dirname "$("$SCRIPT_DIR/cluster.sh" env-file)")
	# shellcheck disable=SC1091
	source "$env_dir/env"
	# shellcheck disable=SC1091
	source "$env_dir/stepup.env"
	local kc=("$KUBECTL" --kubeconfig "$KUBECONFIG_POLICY_WRITER")
	"${kc[@]}" apply -f "$REPO/manifests/examples/" >/dev/null
	"${kc[@]}" -n prod create secret generic db --from-literal=password=hunter2 --dry-run=client -o yaml |
		"${kc[@]}" apply -f - >/dev/null
	local bin_dirs
	bin_dirs="$(dirname "$KUBECTL"):$(dirname "$KUBECTL_STEPUP_BIN")"
	cat <<-EOF

		kube-stepup demo is up: kube-apiserver at $KUBE_APISERVER_URL, the stepup webhook at
		$STEPUP_WEBHOOK_URL, and the example policies from manifests/examples/ applied.

		Act as alice (group developers):

		  export PATH="$bin_dirs:\$PATH" KUBECONFIG=$KUBECONFIG_ALICE
		  kubectl get stepuppolicies
		  kubectl -n prod delete secret db      # refused: names the policy and what to run
		  kubectl -n dev create secret generic scratch --from-literal=a=b
		  kubectl -n dev delete secret scratch  # allowed: no policy covers dev

		Other identities: KUBECONFIG=$env_dir/kubeconfig/{bob,carol,admin}.yaml
		(carol is in the break-glass group). Webhook logs: e2e/scripts/stepup.sh logs
		Metrics: curl $STEPUP_WEBHOOK_ADMIN_URL/metrics

		Stop it with: make demo-down
	EOF
}

cmd_down() {
	"$SCRIPT_DIR/stepup.sh" down || true
	"$SCRIPT_DIR/cluster.sh" down
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
*)
	echo "usage: $0 up|down" >&2
	exit 2
	;;
esac
