#!/usr/bin/env bash
# The local demo: a real control plane, stepup's webhook and controller running against it,
# the example policies applied, and a production secret to try them on.
#
# Usage: demo.sh up|down
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)

cmd_up() {
	# No identity provider yet in the demo: static tokens only (saves Keycloak's start and memory).
	STEPUP_IDP=${STEPUP_IDP:-0} "$SCRIPT_DIR/cluster.sh" up
	"$SCRIPT_DIR/stepup.sh" up
	local env_dir
	env_dir=$(dirname "$("$SCRIPT_DIR/cluster.sh" env-file)")
	# shellcheck disable=SC1091
	source "$env_dir/env"
	# shellcheck disable=SC1091
	source "$env_dir/stepup.env"
	local kc=("$KUBECTL" --kubeconfig "$KUBECONFIG_POLICY_WRITER")
	"${kc[@]}" apply -f "$REPO/manifests/examples/" >/dev/null
	local secret
	for secret in db cache; do
		"${kc[@]}" -n prod create secret generic "$secret" --from-literal=password=hunter2 --dry-run=client -o yaml |
			"${kc[@]}" apply -f - >/dev/null
	done
	local bin_dirs bin_dirs_first
	bin_dirs_first=$(dirname "$KUBECTL_STEPUP_BIN")
	bin_dirs="$(dirname "$KUBECTL"):$bin_dirs_first"
	cat <<-EOF

		kube-stepup demo is up: kube-apiserver at $KUBE_APISERVER_URL, the stepup webhook and
		controller running against it, the example policies from manifests/examples/ applied.

		Act as alice (group developers) in this shell:

		  export PATH="$bin_dirs:\$PATH" KUBECONFIG=$KUBECONFIG_ALICE
		  source <(kubectl completion bash)       # optional: 'kubectl stepup <TAB>' completes
		  kubectl get stepuppolicies
		  kubectl -n prod delete secret db        # refused: names the policy and what to run

		First, in a second shell, the admin enrolls through the one-time bootstrap (admins step
		up to approve others); scan the QR code with any TOTP app (without a phone,
		'hack/totp <secret>' prints the current code for the secret= of the otpauth URI):

		  export PATH="$bin_dirs:\$PATH" KUBECONFIG=$KUBECONFIG_ADMIN
		  kubectl stepup enroll --bootstrap

		Then alice enrolls once; her plugin shows her key fingerprint, which the admin approves
		(the admin's command first asks for the admin's own code, then shows the fingerprint and
		asks to confirm it is the one alice reads out):

		  kubectl stepup enroll                    # as alice: waits for the admin's approval...
		  kubectl stepup approve alice             # ...as the admin, in the second shell

		Let the plugin step up and retry for you (it asks for a code, gets a grant, runs the
		command once more):

		  kubectl stepup -- kubectl -n prod delete secret db
		  kubectl stepup status
		  kubectl stepup revoke --all              # give the grant back

		Or by hand: refused again (the grant is revoked), step up, retry:

		  kubectl -n prod delete secret cache
		  kubectl stepup request --reason DEMO-1
		  kubectl -n prod delete secret cache
		  kubectl get stepupgrants

		Demo-only settings (short, so that expiry and lockout show within minutes; the chart's
		defaults are in charts/stepup/values.yaml):
		  controller: $STEPUP_CONTROLLER_FLAGS
		The audit report of what you just did: KUBECONFIG=$KUBECONFIG_AUDITOR kubectl stepup report --since 1h

		The evidence: kubectl --kubeconfig $KUBECONFIG_ADMIN get events -n stepup-system
		Audit lines: e2e/scripts/stepup.sh logs webhook | grep stepup::audit
		Logs of this run: $env_dir/logs (the previous run's stay in $env_dir/logs.previous)
		Metrics: curl $STEPUP_WEBHOOK_ADMIN_URL/metrics
		Other identities: $env_dir/kubeconfig/{bob,carol,admin}.yaml (carol is in the
		break-glass group; admin approves enrollment keys, resets and unlocks).

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
