#!/usr/bin/env bash
# Runs kube-stepup's processes as local processes against the e2e control plane
# (cluster.sh): installs the CRDs and RBAC, makes a serving certificate for the run,
# starts `stepup controller` (which registers the webhook by URL and makes its
# certificate) and `stepup webhook`.
#
# Usage: stepup.sh up|down|status|logs [webhook|controller] [lines]
#        stepup.sh controller-start|controller-stop|webhook-start|webhook-stop
#                 (the e2e crash, leader and outage scenarios use these)
#
# Environment (defaults in brackets):
#   STEPUP_PROFILE [debug]   cargo profile of the stepup binary (release for benchmarks)
#   STEPUP_WEBHOOK_PORT [18443] STEPUP_WEBHOOK_ADMIN_PORT [18080] STEPUP_CONTROLLER_ADMIN_PORT [18081]
#   CARGO_TARGET_DIR         where cargo builds (the repo's target/ by default)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
HOST=127.0.0.1
WEBHOOK_PORT=${STEPUP_WEBHOOK_PORT:-18443}
WEBHOOK_ADMIN_PORT=${STEPUP_WEBHOOK_ADMIN_PORT:-18080}
CONTROLLER_ADMIN_PORT=${STEPUP_CONTROLLER_ADMIN_PORT:-18081}
PROFILE=${STEPUP_PROFILE:-debug}

log() { echo "stepup: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

load_cluster_env() {
	local env_file
	env_file=$("$SCRIPT_DIR/cluster.sh" env-file)
	[[ -f $env_file ]] || die "the e2e control plane is not up: run e2e/scripts/cluster.sh up"
	# shellcheck disable=SC1090
	source "$env_file"
	"$SCRIPT_DIR/cluster.sh" status >/dev/null || die "the e2e control plane is not running: run e2e/scripts/cluster.sh up"
	DIR=$STEPUP_E2E_DIR
	LOGS=$DIR/logs
	PIDS=$DIR/pids
	STEPUP_PKI=$DIR/stepup-pki
	mkdir -p "$LOGS" "$PIDS" "$STEPUP_PKI"
}

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# The admin as an installer: the chart's admission policy refuses cluster-admins changes to
# stepup's registration and CRDs unless they name the installer group.
INSTALLER_GROUP=stepup:installers
kc_installer() { kc --as admin --as-group system:masters --as-group "$INSTALLER_GROUP" "$@"; }

# The chart's ValidatingAdmissionPolicies, as `helm install` would create them for this setup.
ADMISSION_POLICIES=(stepup-protect-webhook-configuration stepup-protect-crds stepup-protect-controller-rbac
	stepup-protect-grants)

# The binaries this run uses: copied out of cargo's target directory right after the build,
# so that a later build (another checkout sharing the target directory, an edit while the
# suite runs) cannot swap them under running scenarios.
stepup_bin() {
	echo "$DIR/bin/stepup"
}

build() {
	local flags=() target=${CARGO_TARGET_DIR:-$REPO/target}
	[[ $PROFILE == release ]] && flags=(--release)
	# On a terminal, cargo's own progress shows: a first build takes minutes and about 1.3 GB
	# of $target.
	[[ -t 2 ]] || flags+=(--quiet)
	log "building stepup ($PROFILE, into $target)"
	(cd "$REPO" && cargo build "${flags[@]}" --bin stepup --bin kubectl-stepup)
	mkdir -p "$DIR/bin"
	# kubectl runs kubectl_complete-stepup from PATH to complete `kubectl stepup ...`.
	cp "$REPO/krew/kubectl_complete-stepup" "$DIR/bin/kubectl_complete-stepup"
	cp "$target/$PROFILE/stepup" "$DIR/bin/stepup.new" && mv "$DIR/bin/stepup.new" "$DIR/bin/stepup"
	cp "$target/$PROFILE/kubectl-stepup" "$DIR/bin/kubectl-stepup.new" && mv "$DIR/bin/kubectl-stepup.new" "$DIR/bin/kubectl-stepup"
}

running_pid() { # name
	local pidfile=$PIDS/$1.pid pid
	[[ -f $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
	grep -q stepup "/proc/$pid/cmdline" 2>/dev/null || return 1
	echo "$pid"
}

stop_process() { # name
	local pid i
	if pid=$(running_pid "$1"); then
		log "stopping $1 (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$PIDS/$1.pid"
}

show_log() { # name
	log "last lines of $LOGS/$1.log:"
	tail -n 40 "$LOGS/$1.log" >&2 || true
}

# Whether the process just started under this name is still alive (not exited, not a
# zombie). Not `running_pid`: its /proc/PID/cmdline check can read an empty command line while
# the process is in execve, which once made a healthy start look like an exit.
alive() { # name
	local pid state
	pid=$(cat "$PIDS/$1.pid" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
	state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
	[[ $state != Z ]]
}

wait_ready() { # name url timeout-seconds
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		if curl -fsS "$2" >/dev/null 2>&1; then
			return 0
		fi
		alive "$1" || { show_log "$1"; die "$1 exited during startup"; }
		sleep 0.1
	done
	show_log "$1"
	die "$1 not ready after $3s ($2)"
}

# The master key both processes derive their keys from. A file on disk, as a KMS or
# secrets-store CSI volume provides it in a hardened install: never in the Kubernetes API.
make_master_key() {
	if [[ ! -s $STEPUP_PKI/master.key ]]; then
		(umask 077 && "$(stepup_bin)" keygen >"$STEPUP_PKI/master.key")
	fi
}

install_api() {
	log "installing CRDs and RBAC"
	kc_installer apply -f "$REPO/crds/stepup.dev.yaml" >/dev/null
	kc wait --for=condition=Established --timeout=60s \
		crd/stepuppolicies.stepup.dev crd/stepupgrants.stepup.dev \
		crd/stepupchallenges.stepup.dev crd/stepupenrollments.stepup.dev >/dev/null
	# As an installer: after the first `up`, the chart's admission policy guards the controller's role.
	kc_installer apply -f "$REPO/e2e/manifests/rbac.yaml" >/dev/null
	write_sa_kubeconfig policy-writer
}

# The chart's own admission policies (templates/admission-policy.yaml), rendered for the
# processes this script runs: the e2e suite attacks stepup with them in place.
install_admission_policy() {
	log "installing the chart's admission policies"
	"$HELM" template stepup "$REPO/charts/stepup" --namespace stepup-system \
		--show-only templates/admission-policy.yaml \
		--set fullnameOverride=stepup --set webhookConfigurationName=stepup.dev \
		--set "breakGlassGroups={stepup:break-glass}" --set "admissionPolicy.installerGroups={$INSTALLER_GROUP}" |
		kc_installer apply -f - >/dev/null
}

# A workload's credential, as a GitOps controller in its pod holds one: a token bound to a
# Pod object of the service account (Pending without a kubelet). Exemptions count only with
# such a credential; the same name without it is a mask.
write_sa_kubeconfig() { # service-account
	local token uid
	kc apply -f - >/dev/null <<-EOF
		apiVersion: v1
		kind: Pod
		metadata: {name: $1-0, namespace: stepup-system, labels: {app.kubernetes.io/name: $1}}
		spec:
		  serviceAccountName: $1
		  automountServiceAccountToken: false
		  containers:
		  - {name: gitops, image: kube-stepup/gitops:e2e}
	EOF
	uid=$(kc -n stepup-system get pod "$1-0" -o 'jsonpath={.metadata.uid}')
	token=$(kc -n stepup-system create token "$1" --duration=48h \
		--bound-object-kind Pod --bound-object-name "$1-0" --bound-object-uid "$uid")
	cat >"$DIR/kubeconfig/$1.yaml" <<-YAML
		apiVersion: v1
		kind: Config
		clusters:
		- name: e2e
		  cluster: {server: "$KUBE_APISERVER_URL", certificate-authority: "$KUBE_CA_FILE"}
		users:
		- name: $1
		  user: {token: "$token"}
		contexts:
		- name: $1
		  context: {cluster: e2e, user: $1}
		current-context: $1
	YAML
}

# What kubelet does for a pod that mounts the TLS Secret: keep tls.crt and tls.key on disk
# in step with the Secret the controller manages (and rotates). Runs in the background.
cert_sync_loop() {
	local crt key ca
	while true; do
		ca=$(kc -n stepup-system get secret stepup-webhook-tls -o 'jsonpath={.data.ca\.crt}' 2>/dev/null || true)
		if [[ -n $ca && $ca != "$(base64 -w0 <"$STEPUP_PKI/ca.crt" 2>/dev/null)" ]]; then
			base64 -d <<<"$ca" >"$STEPUP_PKI/ca.crt.new" && mv "$STEPUP_PKI/ca.crt.new" "$STEPUP_PKI/ca.crt"
			# What an operator's sync does on a control-plane node: the authorizer's kubeconfig
			# follows the CA (the next `stepup authorizer-config` then changes the rendered file).
			[[ -f $DIR/authorizer-kubeconfig.yaml ]] && write_authorizer_kubeconfig
		fi
		crt=$(kc -n stepup-system get secret stepup-webhook-tls -o 'jsonpath={.data.tls\.crt}' 2>/dev/null || true)
		key=$(kc -n stepup-system get secret stepup-webhook-tls -o 'jsonpath={.data.tls\.key}' 2>/dev/null || true)
		if [[ -n $crt && -n $key ]]; then
			if [[ $crt != "$(base64 -w0 <"$STEPUP_PKI/tls.crt" 2>/dev/null)" ]]; then
				base64 -d <<<"$crt" >"$STEPUP_PKI/tls.crt.new" && mv "$STEPUP_PKI/tls.crt.new" "$STEPUP_PKI/tls.crt"
			fi
			if [[ $key != "$(base64 -w0 <"$STEPUP_PKI/tls.key" 2>/dev/null)" ]]; then
				base64 -d <<<"$key" >"$STEPUP_PKI/tls.key.new" && mv "$STEPUP_PKI/tls.key.new" "$STEPUP_PKI/tls.key"
				chmod 600 "$STEPUP_PKI/tls.key"
			fi
		fi
		sleep 1
	done
}

start_cert_sync() {
	stop_process stepup-certsync
	rm -f "$STEPUP_PKI/tls.crt" "$STEPUP_PKI/tls.key" "$STEPUP_PKI/ca.crt"
	"$0" cert-sync </dev/null >>"$LOGS/stepup-certsync.log" 2>&1 &
	echo $! >"$PIDS/stepup-certsync.pid"
	local i
	for ((i = 0; i < 600; i++)); do
		[[ -s $STEPUP_PKI/tls.crt && -s $STEPUP_PKI/tls.key && -s $STEPUP_PKI/ca.crt ]] && return 0
		sleep 0.1
	done
	show_log stepup-controller
	die "the controller did not create the webhook's certificate within 60s"
}

# With STEPUP_WEBHOOK_STDOUT_LINES_PER_S set, the webhook's stdout goes through a FIFO read at
# that many lines a second (a log pipeline that cannot keep up): bench.sh stall.
webhook_stdout() {
	local out=$LOGS/stepup-webhook.log rate=${STEPUP_WEBHOOK_STDOUT_LINES_PER_S:-}
	if [[ -n $rate ]]; then
		local fifo=$DIR/stepup-webhook.stdout
		rm -f "$fifo" && mkfifo "$fifo"
		# stdout first: opening the FIFO blocks until the webhook opens it, and meanwhile the
		# reader must not hold this function's output (the caller's command substitution).
		python3 -u -c '
import sys, time
rate = float(sys.argv[1])
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(line)
    time.sleep(1 / rate)
' "$rate" >>"$out" 2>&1 <"$fifo" &
		out=$fifo
	fi
	echo "$out"
}

# The kubeconfig the API server's authorization webhook entry names (`stepup authorizer-config
# --webhook-kubeconfig`): the webhook's /authorize URL and CA, and the client certificate the
# API server also presents to admission webhooks (the webhook requires it). The CA is inline:
# a CA file is re-read by the API server's client only every 5 minutes, while inline data takes
# effect with the next reload of the authorization config, which a new CA's fingerprint in the
# rendered file causes. cert_sync_loop rewrites it when the CA changes.
write_authorizer_kubeconfig() {
	local ca
	ca=$(base64 -w0 <"$STEPUP_PKI/ca.crt")
	cat >"$DIR/authorizer-kubeconfig.yaml.new" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: stepup
		  cluster:
		    server: https://$HOST:$WEBHOOK_PORT/authorize
		    certificate-authority-data: $ca
		users:
		- name: kube-apiserver
		  user:
		    client-certificate: $KUBE_ADMISSION_CLIENT_CERT_FILE
		    client-key: $KUBE_ADMISSION_CLIENT_KEY_FILE
		contexts:
		- name: stepup
		  context: {cluster: stepup, user: kube-apiserver}
		current-context: stepup
	EOF
	mv "$DIR/authorizer-kubeconfig.yaml.new" "$DIR/authorizer-kubeconfig.yaml"
}

start_webhook() {
	stop_process stepup-webhook
	local stdout
	stdout=$(webhook_stdout)
	log "starting stepup webhook on $HOST:$WEBHOOK_PORT"
	KUBECONFIG=$KUBECONFIG_STEPUP_WEBHOOK RUST_LOG=${RUST_LOG:-info} \
		"$(stepup_bin)" webhook \
		--listen "$HOST:$WEBHOOK_PORT" --admin-listen "$HOST:$WEBHOOK_ADMIN_PORT" \
		--tls-cert-file "$STEPUP_PKI/tls.crt" --tls-key-file "$STEPUP_PKI/tls.key" \
		--key-file "$STEPUP_PKI/master.key" \
		"${DECISION_FLAGS[@]}" \
		--client-ca-file "$KUBE_ADMISSION_CLIENT_CA_FILE" \
		--drain-period 0s --shutdown-grace 2s --event-interval 1s --cert-reload-interval 1s \
		--audit-flush-interval 1s "${AUDIT_BUDGET[@]}" \
		"${CHALLENGE_LIMITS[@]}" \
		</dev/null >>"$stdout" 2>&1 &
	echo $! >"$PIDS/stepup-webhook.pid"
	wait_ready stepup-webhook "http://$HOST:$WEBHOOK_ADMIN_PORT/readyz" 60
}

# What the webhook decides with, given to the controller too: it publishes them for
# `kubectl stepup check` (as the chart renders them once for both processes).
DECISION_FLAGS=(
	--namespace stepup-system --break-glass-group stepup:break-glass
	--admin-group stepup:admins,system:masters
	--exempt-user system:serviceaccount:stepup-system:policy-writer
)

# The suite refuses alice hundreds of times within an hour, and the report scenarios read her
# refusals back from the trail: the budget is far above the default here (its bounds are unit
# tests: many_identities_flooding_at_once_are_bounded_together).
AUDIT_BUDGET=(--audit-refusal-budget-kib 65536)

# Per-user challenge limits, the same for the webhook and the controller: a short window so
# that the flood scenario does not slow the scenarios after it.
CHALLENGE_LIMITS=(--max-pending-challenges 3 --max-challenges-per-window 10 --challenge-rate-window 20s)

# Flags of the e2e controller: short lease and quick expiry of leftovers, so handover and
# lifecycle scenarios finish in seconds.
CONTROLLER_FLAGS=(
	"${CHALLENGE_LIMITS[@]}"
	"${DECISION_FLAGS[@]}"
	--lease-duration 4s --lease-retry 1s
	--challenge-timeout 2m --challenge-ttl 30s --grant-retention 60s
	--max-failures 3 --failure-window 20s --lockout-threshold 5
	--webhook-url "https://$HOST:$WEBHOOK_PORT/validate" --webhook-dns-names "$HOST,localhost"
	--tls-secret stepup-webhook-tls
	--audit-flush-interval 1s "${AUDIT_BUDGET[@]}"
	--owner-cluster-role stepup-controller
	--admission-policy "$(IFS=,; echo "${ADMISSION_POLICIES[*]}")"
)

# The identity provider the API server trusts (cluster.sh, STEPUP_IDP=1) is trusted for OIDC
# step-up too, from the same AuthenticationConfiguration file; its device client (the realm's
# kubectl-stepup-device, which always demands OTP) serves terminals without a browser.
oidc_flags() {
	[[ -n ${KUBE_AUTHENTICATION_CONFIG:-} ]] &&
		echo "--oidc-authentication-config $KUBE_AUTHENTICATION_CONFIG --oidc-device-client-id kubectl-stepup-device"
	return 0
}

start_controller() {
	stop_process stepup-controller
	log "starting stepup controller"
	# shellcheck disable=SC2046 # the flags are words without spaces
	KUBECONFIG=$KUBECONFIG_STEPUP_CONTROLLER RUST_LOG=${RUST_LOG:-info} \
		"$(stepup_bin)" controller "${CONTROLLER_FLAGS[@]}" $(oidc_flags) --key-file "$STEPUP_PKI/master.key" \
		--admin-listen "$HOST:$CONTROLLER_ADMIN_PORT" --instance e2e-main \
		</dev/null >>"$LOGS/stepup-controller.log" 2>&1 &
	echo $! >"$PIDS/stepup-controller.pid"
	wait_ready stepup-controller "http://$HOST:$CONTROLLER_ADMIN_PORT/readyz" 60
}

write_env() {
	cat >"$DIR/stepup.env" <<-EOF
		export STEPUP_WEBHOOK_URL=https://$HOST:$WEBHOOK_PORT/validate
		export STEPUP_WEBHOOK_ADMIN_URL=http://$HOST:$WEBHOOK_ADMIN_PORT
		export STEPUP_BIN=$(stepup_bin)
		export KUBECTL_STEPUP_BIN=$(dirname "$(stepup_bin)")/kubectl-stepup
		export KUBECONFIG_POLICY_WRITER=$DIR/kubeconfig/policy-writer.yaml
		export STEPUP_WEBHOOK_LOG=$LOGS/stepup-webhook.log
		export STEPUP_CONTROLLER_ADMIN_URL=http://$HOST:$CONTROLLER_ADMIN_PORT
		export STEPUP_CONTROLLER_LOG=$LOGS/stepup-controller.log
		export STEPUP_CONTROLLER_FLAGS="${CONTROLLER_FLAGS[*]} $(oidc_flags) --key-file $STEPUP_PKI/master.key"
		export STEPUP_LOGS_DIR=$LOGS
		export STEPUP_KEY_FILE=$STEPUP_PKI/master.key
		export STEPUP_INSTALLER_GROUP=$INSTALLER_GROUP
		export STEPUP_AUTHORIZER_KUBECONFIG=$DIR/authorizer-kubeconfig.yaml
	EOF
}

cmd_up() {
	load_cluster_env
	build
	make_master_key
	install_api
	install_admission_policy
	# The controller registers the webhook and makes its certificate; the webhook then
	# serves that certificate, kept on disk by the sync loop as kubelet would.
	start_controller
	start_cert_sync
	write_authorizer_kubeconfig
	start_webhook
	write_env
	log "webhook registered; env in $DIR/stepup.env"
}

# After a code change: rebuild, then restart the controller and the webhook on the running
# control plane (the registration, the key and the admission policies stay).
cmd_restart() {
	load_cluster_env
	build
	# The CRDs may have changed with the code (make crds): a restart tests the new schema.
	install_api
	start_controller
	start_webhook
	write_env
	log "stepup restarted"
}

cmd_down() {
	load_cluster_env
	# Stop the controller (it would re-register), then unregister: the API server would
	# otherwise keep calling a dead webhook.
	stop_process stepup-controller
	kc_installer delete validatingwebhookconfiguration stepup.dev --ignore-not-found >/dev/null 2>&1 || true
	# Likewise the authorization chain: a render with no policies sends the webhook nothing.
	if [[ -x $(stepup_bin) && -n ${KUBE_AUTHORIZATION_CONFIG:-} ]]; then
		"$(stepup_bin)" authorizer-config --webhook-kubeconfig "$DIR/authorizer-kubeconfig.yaml" -f /dev/null \
			--node-authorizer=false --output "$KUBE_AUTHORIZATION_CONFIG" || true
	fi
	stop_process stepup-certsync
	stop_process stepup-webhook
}

cmd_status() {
	load_cluster_env
	if running_pid stepup-webhook >/dev/null && curl -fsS "http://$HOST:$WEBHOOK_ADMIN_PORT/readyz" >/dev/null; then
		echo "stepup webhook: ready"
	else
		echo "stepup webhook: not running"
		return 1
	fi
	if running_pid stepup-controller >/dev/null; then
		echo "stepup controller: running"
	else
		echo "stepup controller: not running"
		return 1
	fi
}

main() {
	case ${1:-} in
	up) cmd_up ;;
	restart) cmd_restart ;;
	down) cmd_down ;;
	status) cmd_status ;;
	logs) load_cluster_env && tail -n "${3:-100}" "$LOGS/stepup-${2:-webhook}.log" ;;
	controller-start) load_cluster_env && start_controller ;;
	controller-stop) load_cluster_env && stop_process stepup-controller ;;
	webhook-start) load_cluster_env && start_webhook ;;
	webhook-stop) load_cluster_env && stop_process stepup-webhook ;;
	webhook-restart) load_cluster_env && start_webhook ;;
	cert-sync) load_cluster_env && cert_sync_loop ;;
	*) die "usage: $0 up|restart|down|status|logs [webhook|controller] [lines]|controller-start|controller-stop" ;;
	esac
}

main "$@"
