#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the kube-stepup e2e tests:
# etcd + kube-apiserver built by build-controlplane.sh. There is no kubelet,
# scheduler or controller-manager: pods stay Pending, and the few things a
# controller would do (default ServiceAccounts, ClusterRole aggregation) are
# done here once, at `up`.
#
# Usage: cluster.sh up|down|status|env|logs [etcd|kube-apiserver|audit|keycloak] [lines]
#                   |aggregate-roles
#   up               start (or keep, when already healthy) the control plane
#   down             stop it; state (logs, kubeconfigs) stays until the next `up`
#   status           exit 0 when etcd and kube-apiserver are both up
#   env              print the sourceable env file: source <(cluster.sh env)
#   env-file         print the path of that file
#   logs             tail the logs
#   aggregate-roles  redo ClusterRole aggregation (after installing roles labelled
#                    rbac.authorization.k8s.io/aggregate-to-*)
#   stop|start etcd|kube-apiserver, restart etcd|kube-apiserver [seconds down]
#                    one daemon of a running control plane, its state kept (fault scenarios)
#
# Environment (defaults in brackets):
#   STEPUP_CACHE [${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup]
#   STEPUP_E2E_DIR [$STEPUP_CACHE/e2e-run]       state: pki, etcd data, logs, kubeconfigs
#   STEPUP_ETCD_CLIENT_PORT [23790] STEPUP_ETCD_PEER_PORT [23800] STEPUP_APISERVER_PORT [16443]
#   STEPUP_READY_TIMEOUT [120] seconds    STEPUP_SA_TOKEN_DURATION [48h]
#   STEPUP_API_AUDIENCES [https://kubernetes.default.svc]
#   STEPUP_IDP [1]   1: start the identity provider (idp.sh, Keycloak) and trust it for OIDC
#                    users (--authentication-config); 0: static tokens only (the demo, benchmarks)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${STEPUP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup}
DIR=${STEPUP_E2E_DIR:-$CACHE_ROOT/e2e-run}
HOST=127.0.0.1
ETCD_CLIENT_PORT=${STEPUP_ETCD_CLIENT_PORT:-23790}
ETCD_PEER_PORT=${STEPUP_ETCD_PEER_PORT:-23800}
APISERVER_PORT=${STEPUP_APISERVER_PORT:-16443}
# The stepup webhook's port (stepup.sh): the API server's admission kubeconfig is keyed by it.
WEBHOOK_PORT=${STEPUP_WEBHOOK_PORT:-18443}
READY_TIMEOUT=${STEPUP_READY_TIMEOUT:-120}
SA_TOKEN_DURATION=${STEPUP_SA_TOKEN_DURATION:-48h}
API_AUDIENCES=${STEPUP_API_AUDIENCES:-https://kubernetes.default.svc}
SA_ISSUER=https://kubernetes.default.svc
IDP=${STEPUP_IDP:-1}
# Where the API server puts a sign-in's acr, amr and auth_time (userInfo.extra). Not stepup's
# defaults (stepup.dev/...): the e2e stepup reads these keys (STEPUP_SIGN_IN_*_EXTRA in the env
# file), which proves the setting reaches the webhook, the controller's authorizer probe, the
# plugin and `stepup authorizer-config`.
SIGN_IN_ACR_EXTRA=idp.stepup-e2e.test/acr
SIGN_IN_AMR_EXTRA=idp.stepup-e2e.test/amr
SIGN_IN_AUTH_TIME_EXTRA=idp.stepup-e2e.test/auth-time

ETCD_URL=http://$HOST:$ETCD_CLIENT_PORT
ETCD_PEER_URL=http://$HOST:$ETCD_PEER_PORT
APISERVER_URL=https://$HOST:$APISERVER_PORT
PKI=$DIR/pki
LOGS=$DIR/logs
PIDS=$DIR/pids
KCFG=$DIR/kubeconfig
TOKENS=$DIR/tokens
ENV_FILE=$DIR/env

# Users authenticated by --token-auth-file: kubeconfig-name|user|uid|groups.
# alice-recreated is the same user name with a new uid (account deleted and re-created).
STATIC_USERS=(
	"admin|admin|uid-admin|system:masters"
	"alice|alice|uid-alice-1|developers"
	"alice-recreated|alice|uid-alice-2|developers"
	"bob|bob|uid-bob-1|developers"
	"carol|carol|uid-carol-1|developers,stepup:break-glass"
	"auditor|auditor|uid-auditor-1|stepup:auditors"
)
# ServiceAccounts in stepup-system whose TokenRequest tokens get a kubeconfig.
SERVICE_ACCOUNTS=(stepup-webhook stepup-controller)

log() { echo "cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- binaries

BIN_DIR=$("$SCRIPT_DIR/build-controlplane.sh" --print-bin-dir)
KUBECTL=$BIN_DIR/kubectl

ensure_binaries() {
	local b
	for b in etcd kube-apiserver kubectl helm; do
		if [[ ! -x $BIN_DIR/$b ]]; then
			log "control-plane binaries missing, building them"
			"$SCRIPT_DIR/build-controlplane.sh" >/dev/null
			return
		fi
	done
}

# ---------------------------------------------------------------- processes

# PID of a daemon we started, if it is still running; fails otherwise. The
# process name is checked too, so a recycled PID is never taken for ours.
running_pid() { # name
	local pidfile=$PIDS/$1.pid pid arg0
	[[ -f $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
	IFS= read -r -d '' arg0 <"/proc/$pid/cmdline" || true
	[[ ${arg0##*/} == "$1" ]] || return 1
	echo "$pid"
}

start_daemon() { # name command...
	local name=$1 pid i
	shift
	"$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
	pid=$!
	echo "$pid" >"$PIDS/$name.pid"
	# Until the forked shell has exec'd, /proc/PID/cmdline still names bash and
	# running_pid would take the daemon for dead: wait for the exec.
	for ((i = 0; i < 50; i++)); do
		running_pid "$name" >/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.05
	done
}

stop_daemon() { # name
	local pid i
	if pid=$(running_pid "$1"); then
		log "stopping $1 (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "$1 did not stop within 10s, killing it"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.2
		fi
	fi
	rm -f "$PIDS/$1.pid"
}

port_in_use() { # port
	(exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

check_ports() {
	local spec port var
	for spec in "$ETCD_CLIENT_PORT:STEPUP_ETCD_CLIENT_PORT" "$ETCD_PEER_PORT:STEPUP_ETCD_PEER_PORT" \
		"$APISERVER_PORT:STEPUP_APISERVER_PORT"; do
		port=${spec%%:*} var=${spec#*:}
		if port_in_use "$port"; then
			die "port $HOST:$port is already in use by another process; free it or set $var"
		fi
	done
}

LOG_SHOWN=
fail_with_log() { # log-name message
	log "ERROR: $2"
	LOG_SHOWN=1
	if [[ -f $LOGS/$1.log ]]; then
		log "last lines of $LOGS/$1.log:"
		tail -n 40 "$LOGS/$1.log" >&2
	fi
	exit 1
}

# ---------------------------------------------------------------- health

etcd_healthy() {
	curl -fsS --noproxy '*' --max-time 2 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'
}

apiserver_ready() {
	[[ -f $PKI/ca.crt && -f $TOKENS/admin.token ]] || return 1
	curl -fsS --noproxy '*' --max-time 3 --cacert "$PKI/ca.crt" \
		-H "Authorization: Bearer $(<"$TOKENS/admin.token")" "$APISERVER_URL/readyz" >/dev/null 2>&1
}

# A person signed in at the IdP (bob, password only) is known to the API server.
apiserver_trusts_idp() {
	local token
	token=$("$SCRIPT_DIR/idp.sh" token bob 2>/dev/null) && [[ -n $token ]] || return 1
	curl -fsS --noproxy '*' --max-time 3 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $token" \
		-H 'Content-Type: application/json' -X POST \
		-d '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' \
		"$APISERVER_URL/apis/authentication.k8s.io/v1/selfsubjectreviews" 2>/dev/null | grep -q '"username": *"bob"'
}

healthy() {
	running_pid etcd >/dev/null && running_pid kube-apiserver >/dev/null &&
		etcd_healthy && apiserver_ready && [[ -f $ENV_FILE ]] && idp_healthy
}

# Whether this control plane was started with the identity provider (its env names it).
idp_expected() {
	[[ -f $ENV_FILE ]] && grep -q '^export STEPUP_IDP_ISSUER=' "$ENV_FILE"
}

# A control plane started with the IdP needs it running; one asked for with STEPUP_IDP=1 needs
# to have been started with it.
idp_healthy() {
	if idp_expected; then
		"$SCRIPT_DIR/idp.sh" status >/dev/null 2>&1
	else
		((IDP == 0))
	fi
}

wait_for() { # log-name timeout-seconds description check-command...
	local name=$1 timeout=$2 what=$3
	shift 3
	local deadline=$((SECONDS + timeout))
	until "$@"; do
		running_pid "$name" >/dev/null || fail_with_log "$name" "$name exited while waiting for $what"
		((SECONDS < deadline)) || fail_with_log "$name" "timed out after ${timeout}s waiting for $what"
		sleep 0.5
	done
}

# ---------------------------------------------------------------- state

fresh_state() {
	[[ -n $DIR && $DIR != / ]] || die "refusing to use '$DIR' as the state directory"
	# The previous run's logs stay, one generation back, for whoever wants to look at them.
	if [[ -d $LOGS ]]; then
		rm -rf "$LOGS.previous"
		mv "$LOGS" "$LOGS.previous"
	fi
	rm -rf "$PKI" "$DIR/etcd-data" "$PIDS" "$KCFG" "$TOKENS" "$ENV_FILE" "$DIR/audit-policy.yaml" \
		"$DIR/admission-config.yaml" "$DIR/admission-kubeconfig.yaml" "$DIR/authorization-config.yaml" \
		"$DIR/authentication-config.yaml"
	mkdir -p "$PKI" "$LOGS" "$PIDS" "$KCFG" "$TOKENS"
	chmod 700 "$DIR" "$PKI" "$TOKENS" "$KCFG"
}

gen_pki() {
	command -v openssl >/dev/null || die "openssl is required"
	local ossl=(openssl)
	# A per-run CA (its key is exported as KUBE_CA_KEY_FILE, so tests can sign serving
	# certificates for webhooks with it), the apiserver serving certificate and the
	# service-account token signing key pair.
	"${ossl[@]}" req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 \
		-keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=kube-stepup-e2e-ca" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	"${ossl[@]}" req -newkey rsa:2048 -nodes -sha256 \
		-keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" -subj "/CN=kube-apiserver" 2>/dev/null
	cat >"$PKI/apiserver.ext" <<-EOF
		basicConstraints=critical,CA:FALSE
		keyUsage=critical,digitalSignature,keyEncipherment
		extendedKeyUsage=serverAuth
		subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
		authorityKeyIdentifier=keyid,issuer
	EOF
	"${ossl[@]}" x509 -req -sha256 -days 30 -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" \
		-CAkey "$PKI/ca.key" -CAcreateserial -extfile "$PKI/apiserver.ext" \
		-out "$PKI/apiserver.crt" 2>/dev/null
	"${ossl[@]}" genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
	"${ossl[@]}" pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
	# Mutual TLS between the API server and admission webhooks: a CA of its own (the webhook
	# trusts nothing else) and the client certificate the API server presents to the webhook.
	"${ossl[@]}" req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 \
		-keyout "$PKI/admission-client-ca.key" -out "$PKI/admission-client-ca.crt" \
		-subj "/CN=kube-stepup-e2e-admission-client-ca" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	"${ossl[@]}" req -newkey rsa:2048 -nodes -sha256 -keyout "$PKI/admission-client.key" \
		-out "$PKI/admission-client.csr" -subj "/CN=kube-apiserver-admission" 2>/dev/null
	cat >"$PKI/admission-client.ext" <<-EOF
		basicConstraints=critical,CA:FALSE
		keyUsage=critical,digitalSignature,keyEncipherment
		extendedKeyUsage=clientAuth
	EOF
	"${ossl[@]}" x509 -req -sha256 -days 30 -in "$PKI/admission-client.csr" -CA "$PKI/admission-client-ca.crt" \
		-CAkey "$PKI/admission-client-ca.key" -CAcreateserial -extfile "$PKI/admission-client.ext" \
		-out "$PKI/admission-client.crt" 2>/dev/null
	chmod 600 "$PKI"/*.key
}

# The AdmissionConfiguration that makes the API server present its client certificate to the
# stepup webhook (registered by URL: the kubeconfig user is named after the URL's host:port).
write_admission_config() {
	cat >"$DIR/admission-kubeconfig.yaml" <<-EOF
		apiVersion: v1
		kind: Config
		users:
		- name: "$HOST:$WEBHOOK_PORT"
		  user:
		    client-certificate: $PKI/admission-client.crt
		    client-key: $PKI/admission-client.key
	EOF
	cat >"$DIR/admission-config.yaml" <<-EOF
		apiVersion: apiserver.config.k8s.io/v1
		kind: AdmissionConfiguration
		plugins:
		- name: ValidatingAdmissionWebhook
		  configuration:
		    apiVersion: apiserver.config.k8s.io/v1
		    kind: WebhookAdmissionConfiguration
		    kubeConfigFile: $DIR/admission-kubeconfig.yaml
		- name: MutatingAdmissionWebhook
		  configuration:
		    apiVersion: apiserver.config.k8s.io/v1
		    kind: WebhookAdmissionConfiguration
		    kubeConfigFile: $DIR/admission-kubeconfig.yaml
	EOF
	# The authorization chain: RBAC alone until a policy names a verb (a read); then
	# `stepup authorizer-config` puts the stepup webhook before RBAC in this file, and the API
	# server reloads it (the e2e harness renders it after every policy change, as an operator's
	# sync would).
	cat >"$DIR/authorization-config.yaml" <<-EOF
		apiVersion: apiserver.config.k8s.io/v1
		kind: AuthorizationConfiguration
		authorizers:
		- type: RBAC
		  name: rbac
	EOF
}

# The API server trusts the e2e identity provider for people: an ID token of the
# `kubectl-stepup` client (or `kubectl-stepup-device`, the device grant's) names the user (preferred_username, as the static tokens do: OIDC
# alice is alice) and groups, and carries how and when they signed in as extras, which
# admission and authorization see. IdP groups and names under `system:` are refused.
write_authentication_config() {
	local issuer
	issuer=$(. "$DIR/idp/env" && echo "$STEPUP_IDP_ISSUER")
	{
		cat <<-EOF
			apiVersion: apiserver.config.k8s.io/v1
			kind: AuthenticationConfiguration
			jwt:
			- issuer:
			    url: $issuer
			    audiences: [kubectl-stepup, kubectl-stepup-device, kubectl-stepup-confidential]
			    audienceMatchPolicy: MatchAny
			    certificateAuthority: |
		EOF
		sed 's/^/      /' "$PKI/ca.crt"
		cat <<-EOF
			  claimMappings:
			    username:
			      claim: preferred_username
			      prefix: ""
			    groups:
			      claim: groups
			      prefix: ""
			    uid:
			      claim: sub
			    extra:
			    - key: $SIGN_IN_ACR_EXTRA
			      valueExpression: "has(claims.acr) ? claims.acr : ''"
			    - key: $SIGN_IN_AMR_EXTRA
			      valueExpression: "has(claims.amr) ? claims.amr : []"
			    - key: $SIGN_IN_AUTH_TIME_EXTRA
			      valueExpression: "has(claims.auth_time) ? string(int(claims.auth_time)) : ''"
			  userValidationRules:
			  - expression: "!user.username.startsWith('system:')"
			    message: "an identity provider's user name may not start with system:"
			  - expression: "user.groups.all(g, !g.startsWith('system:'))"
			    message: "an identity provider's groups may not start with system:"
		EOF
	} >"$DIR/authentication-config.yaml"
}

gen_tokens() {
	local entry name user uid groups token
	: >"$PKI/tokens.csv"
	for entry in "${STATIC_USERS[@]}"; do
		IFS='|' read -r name user uid groups <<<"$entry"
		token=$(openssl rand -hex 32)
		echo "$token" >"$TOKENS/$name.token"
		echo "$token,$user,$uid,\"$groups\"" >>"$PKI/tokens.csv"
	done
	chmod 600 "$PKI/tokens.csv" "$TOKENS"/*.token
}

write_audit_policy() {
	# Metadata for every request (the RequestReceived stage is omitted: each request
	# still gets its ResponseComplete/ResponseStarted event, which carries the
	# admission webhooks' auditAnnotations).
	cat >"$DIR/audit-policy.yaml" <<-EOF
		apiVersion: audit.k8s.io/v1
		kind: Policy
		omitStages: ["RequestReceived"]
		rules:
		- level: Metadata
	EOF
}

write_kubeconfig() { # name token
	cat >"$KCFG/$1.yaml" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: stepup-e2e
		  cluster:
		    server: $APISERVER_URL
		    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
		users:
		- name: $1
		  user:
		    token: $2
		contexts:
		- name: $1@stepup-e2e
		  context:
		    cluster: stepup-e2e
		    user: $1
		    namespace: default
		current-context: $1@stepup-e2e
	EOF
	chmod 600 "$KCFG/$1.yaml"
}

env_name() { # kubeconfig-name -> ALICE_RECREATED
	local n=${1^^}
	echo "${n//-/_}"
}

write_env() {
	local name
	{
		echo "# kube-stepup e2e control plane; source this file."
		printf 'export STEPUP_E2E_DIR=%q\n' "$DIR"
		printf 'export KUBE_APISERVER_URL=%q\n' "$APISERVER_URL"
		printf 'export KUBE_CA_FILE=%q\n' "$PKI/ca.crt"
		printf 'export KUBE_CA_KEY_FILE=%q\n' "$PKI/ca.key"
		printf 'export KUBE_AUDIT_LOG=%q\n' "$LOGS/audit.log"
		printf 'export KUBE_ADMISSION_CLIENT_CA_FILE=%q\n' "$PKI/admission-client-ca.crt"
		printf 'export KUBE_ADMISSION_CLIENT_CERT_FILE=%q\n' "$PKI/admission-client.crt"
		printf 'export KUBE_ADMISSION_CLIENT_KEY_FILE=%q\n' "$PKI/admission-client.key"
		printf 'export KUBE_AUTHORIZATION_CONFIG=%q\n' "$DIR/authorization-config.yaml"
		if ((IDP)); then
			printf 'export KUBE_AUTHENTICATION_CONFIG=%q\n' "$DIR/authentication-config.yaml"
			printf 'export STEPUP_SIGN_IN_ACR_EXTRA=%q\n' "$SIGN_IN_ACR_EXTRA"
			printf 'export STEPUP_SIGN_IN_AMR_EXTRA=%q\n' "$SIGN_IN_AMR_EXTRA"
			printf 'export STEPUP_SIGN_IN_AUTH_TIME_EXTRA=%q\n' "$SIGN_IN_AUTH_TIME_EXTRA"
			grep '^export ' "$DIR/idp/env"
		fi
		printf 'export ETCD_URL=%q\n' "$ETCD_URL"
		printf 'export STEPUP_E2E_TOKEN_DIR=%q\n' "$TOKENS"
		printf 'export KUBECTL=%q\n' "$BIN_DIR/kubectl"
		printf 'export HELM=%q\n' "$BIN_DIR/helm"
		printf 'export ETCD=%q\n' "$BIN_DIR/etcd"
		printf 'export KUBE_APISERVER=%q\n' "$BIN_DIR/kube-apiserver"
		for name in "$KCFG"/*.yaml; do
			name=${name##*/}
			name=${name%.yaml}
			printf 'export KUBECONFIG_%s=%q\n' "$(env_name "$name")" "$KCFG/$name.yaml"
		done
	} >"$ENV_FILE"
}

# ---------------------------------------------------------------- daemons

start_etcd() {
	# --unsafe-no-fsync: throw-away data, and fsync dominates write latency on CI disks.
	start_daemon etcd "$BIN_DIR/etcd" --name stepup-e2e --data-dir "$DIR/etcd-data" \
		--listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
		--listen-peer-urls "$ETCD_PEER_URL" --initial-advertise-peer-urls "$ETCD_PEER_URL" \
		--initial-cluster "stepup-e2e=$ETCD_PEER_URL" --initial-cluster-state new \
		--unsafe-no-fsync
	wait_for etcd 30 "etcd health" etcd_healthy
}

start_apiserver() {
	# --endpoint-reconciler-type=none: the apiserver would otherwise publish its
	# advertise address in the `kubernetes` Endpoints, and validation rejects
	# loopback addresses there (an error logged every few seconds). Nothing here
	# needs that Service to have endpoints.
	# People from the identity provider, when this control plane was started with one (a
	# restarted API server keeps trusting it).
	local authn=()
	[[ -f $DIR/authentication-config.yaml ]] && authn=(--authentication-config="$DIR/authentication-config.yaml")
	start_daemon kube-apiserver "$BIN_DIR/kube-apiserver" \
		--etcd-servers="$ETCD_URL" \
		--bind-address="$HOST" --advertise-address="$HOST" --secure-port="$APISERVER_PORT" \
		--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" \
		--token-auth-file="$PKI/tokens.csv" \
		${authn[@]+"${authn[@]}"} \
		--authorization-config="$DIR/authorization-config.yaml" \
		--service-account-issuer="$SA_ISSUER" \
		--service-account-key-file="$PKI/sa.pub" \
		--service-account-signing-key-file="$PKI/sa.key" \
		--api-audiences="$API_AUDIENCES" \
		--service-cluster-ip-range=10.96.0.0/16 \
		--endpoint-reconciler-type=none \
		--allow-privileged=true \
		--audit-policy-file="$DIR/audit-policy.yaml" \
		--admission-control-config-file="$DIR/admission-config.yaml" \
		--audit-log-path="$LOGS/audit.log" \
		--cert-dir="$PKI/generated"
	wait_for kube-apiserver "$READY_TIMEOUT" "kube-apiserver /readyz" apiserver_ready
}

# ---------------------------------------------------------------- objects

kc() { "$KUBECTL" --kubeconfig "$KCFG/admin.yaml" "$@"; }

wait_for_system_namespaces() {
	# /readyz can pass before the system namespaces controller has created them.
	local deadline=$((SECONDS + 30))
	until kc get namespace default kube-system kube-public kube-node-lease >/dev/null 2>&1; do
		((SECONDS < deadline)) || fail_with_log kube-apiserver "system namespaces were not created"
		sleep 0.5
	done
}

apply_base_objects() {
	kc apply -f - >/dev/null <<-EOF
		apiVersion: v1
		kind: Namespace
		metadata: {name: prod, labels: {env: prod}}
		---
		apiVersion: v1
		kind: Namespace
		metadata: {name: dev, labels: {env: dev}}
		---
		apiVersion: v1
		kind: Namespace
		metadata: {name: stepup-system}
		---
		# Developers edit the application namespaces only: never stepup-system, whose
		# Secrets hold the TOTP seeds.
		apiVersion: rbac.authorization.k8s.io/v1
		kind: RoleBinding
		metadata: {name: developers-edit, namespace: prod}
		roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
		subjects:
		- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: developers}
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: RoleBinding
		metadata: {name: developers-edit, namespace: dev}
		roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
		subjects:
		- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: developers}
		---
		apiVersion: v1
		kind: ServiceAccount
		metadata: {name: stepup-webhook, namespace: stepup-system}
		---
		apiVersion: v1
		kind: ServiceAccount
		metadata: {name: stepup-controller, namespace: stepup-system}
	EOF
}

create_default_service_accounts() {
	# Normally the serviceaccount controller (kube-controller-manager) does this,
	# and pod admission rejects pods whose ServiceAccount does not exist.
	local ns manifest=""
	for ns in $(kc get namespaces -o 'jsonpath={.items[*].metadata.name}'); do
		manifest+=$'---\napiVersion: v1\nkind: ServiceAccount\n'
		manifest+="metadata: {name: default, namespace: $ns}"$'\n'
	done
	kc apply -f - >/dev/null <<<"$manifest"
}

# Prints a ClusterRole list's rules as YAML sequence items.
# shellcheck disable=SC2016 # Go template, not shell
RULES_TEMPLATE='{{- range .items}}{{range .rules}}
- verbs: [{{range $i, $v := .verbs}}{{if $i}}, {{end}}{{printf "%q" $v}}{{end}}]
{{- with .apiGroups}}
  apiGroups: [{{range $i, $v := .}}{{if $i}}, {{end}}{{printf "%q" $v}}{{end}}]
{{- end}}{{with .resources}}
  resources: [{{range $i, $v := .}}{{if $i}}, {{end}}{{printf "%q" $v}}{{end}}]
{{- end}}{{with .resourceNames}}
  resourceNames: [{{range $i, $v := .}}{{if $i}}, {{end}}{{printf "%q" $v}}{{end}}]
{{- end}}{{with .nonResourceURLs}}
  nonResourceURLs: [{{range $i, $v := .}}{{if $i}}, {{end}}{{printf "%q" $v}}{{end}}]
{{- end}}{{end}}{{end}}'

# One line per clusterRoleSelector of a ClusterRole: its matchLabels as k=v,k=v.
# shellcheck disable=SC2016 # Go template, not shell
SELECTORS_TEMPLATE='{{range .aggregationRule.clusterRoleSelectors}}{{range $k, $v := .matchLabels}}{{$k}}={{$v}},{{end}}{{"\n"}}{{end}}'

aggregate_role() { # name
	local selector rules=""
	while IFS= read -r selector; do
		[[ -n $selector ]] || continue
		rules+=$(kc get clusterroles -l "${selector%,}" -o "go-template=$RULES_TEMPLATE")
	done < <(kc get clusterrole "$1" -o "go-template=$SELECTORS_TEMPLATE")
	kc patch clusterrole "$1" --type=merge -p "rules:${rules:- []}" >/dev/null
}

# The built-in admin/edit/view ClusterRoles are empty shells whose rules the
# clusterrole-aggregation controller (kube-controller-manager) fills in from the
# roles their aggregationRule selects; without it `edit` grants nothing. Do that
# aggregation once: view first, then edit (which selects view), then admin (which
# selects edit), then any other aggregated role. matchExpressions are not supported.
aggregate_cluster_roles() {
	local role others
	others=$(kc get clusterroles \
		-o 'go-template={{range .items}}{{if .aggregationRule}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}')
	for role in view edit admin $(grep -vxE 'view|edit|admin' <<<"$others" || true); do
		aggregate_role "$role"
	done
}

# stepup's processes run as they would in their pods: with tokens bound to a Pod object of
# their service account (Pending forever without a kubelet), so the API server reports the
# pod-name and pod-uid extras a real pod's token carries.
issue_sa_tokens() {
	local sa token uid
	for sa in "${SERVICE_ACCOUNTS[@]}"; do
		kc apply -f - >/dev/null <<-EOF
			apiVersion: v1
			kind: Pod
			metadata: {name: $sa-0, namespace: stepup-system, labels: {app.kubernetes.io/name: $sa}}
			spec:
			  serviceAccountName: $sa
			  automountServiceAccountToken: false
			  containers:
			  - {name: stepup, image: kube-stepup/stepup:e2e}
		EOF
		uid=$(kc -n stepup-system get pod "$sa-0" -o 'jsonpath={.metadata.uid}')
		token=$(kc create token "$sa" -n stepup-system --duration="$SA_TOKEN_DURATION" \
			--bound-object-kind Pod --bound-object-name "$sa-0" --bound-object-uid "$uid")
		echo "$token" >"$TOKENS/$sa.token"
		chmod 600 "$TOKENS/$sa.token"
		write_kubeconfig "$sa" "$token"
	done
}

bootstrap() {
	local entry name rest
	for entry in "${STATIC_USERS[@]}"; do
		IFS='|' read -r name rest <<<"$entry"
		write_kubeconfig "$name" "$(<"$TOKENS/$name.token")"
	done
	wait_for_system_namespaces
	apply_base_objects
	create_default_service_accounts
	aggregate_cluster_roles
	issue_sa_tokens
	write_env
}

# ---------------------------------------------------------------- commands

# On a failed `up`: show the apiserver log unless a step already showed one, and
# stop whatever was started.
on_up_exit() {
	local rc=$?
	((rc)) || return 0
	if [[ -z $LOG_SHOWN && -f $LOGS/kube-apiserver.log ]]; then
		log "last lines of $LOGS/kube-apiserver.log:"
		tail -n 40 "$LOGS/kube-apiserver.log" >&2
	fi
	stop_all
	log "up failed; logs are in $LOGS"
	exit "$rc"
}

cmd_up() {
	ensure_binaries
	if healthy; then
		log "already up and healthy: $APISERVER_URL (env: $ENV_FILE)"
		return
	fi
	if running_pid etcd >/dev/null || running_pid kube-apiserver >/dev/null; then
		log "found a stale or unhealthy control plane, restarting it"
		stop_all
	fi
	check_ports
	local start=$SECONDS
	mkdir -p "$DIR"
	fresh_state
	trap on_up_exit EXIT
	gen_pki
	if ((IDP)); then
		# Keycloak boots (20-50 s) while etcd and the API server start; the API server retries
		# the issuer's discovery until it answers.
		"$SCRIPT_DIR/idp.sh" start
		write_authentication_config
	fi
	gen_tokens
	write_audit_policy
	write_admission_config
	start_etcd
	start_apiserver
	bootstrap
	if ((IDP)); then
		"$SCRIPT_DIR/idp.sh" wait
		# The API server retries the issuer's discovery every 10 s: wait until it takes a token.
		wait_for kube-apiserver 60 "the API server to accept the identity provider's tokens" apiserver_trusts_idp
	fi
	trap - EXIT
	log "up in $((SECONDS - start))s: $APISERVER_URL"
	log "kubeconfigs in $KCFG; source $ENV_FILE"
}

# Processes that run against this control plane (stepup.sh's webhook and controller) keep
# their pid files here too; stop them first, or wiping the state would orphan them.
stop_clients() {
	local pidfile pid
	for pidfile in "$PIDS"/stepup-*.pid; do
		[[ -f $pidfile ]] || continue
		pid=$(<"$pidfile")
		if [[ $pid =~ ^[0-9]+$ ]] && grep -q stepup "/proc/$pid/cmdline" 2>/dev/null; then
			log "stopping $(basename "$pidfile" .pid) (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
		fi
		rm -f "$pidfile"
	done
}

stop_all() {
	stop_clients
	stop_daemon kube-apiserver
	stop_daemon etcd
	"$SCRIPT_DIR/idp.sh" down
}

cmd_down() {
	if [[ -d $PIDS ]]; then
		stop_all
	fi
	log "down"
}

cmd_status() {
	local pid rc=0
	if pid=$(running_pid etcd) && etcd_healthy; then
		echo "etcd: up (pid $pid, $ETCD_URL)"
	else
		echo "etcd: down"
		rc=1
	fi
	if pid=$(running_pid kube-apiserver) && apiserver_ready; then
		echo "kube-apiserver: up (pid $pid, $APISERVER_URL)"
	else
		echo "kube-apiserver: down"
		rc=1
	fi
	if idp_expected; then
		"$SCRIPT_DIR/idp.sh" status || rc=1
	fi
	return "$rc"
}

cmd_env() {
	[[ -f $ENV_FILE ]] || die "no env file at $ENV_FILE; run: $0 up"
	cat "$ENV_FILE"
}

cmd_logs() { # [etcd|kube-apiserver|audit] [lines]
	local lines=${2:-50} name
	case ${1:-all} in
	all)
		for name in etcd kube-apiserver; do
			echo "==> $LOGS/$name.log <=="
			tail -n "$lines" "$LOGS/$name.log" 2>/dev/null || true
		done
		;;
	etcd | kube-apiserver | audit) tail -n "$lines" "$LOGS/$1.log" ;;
	apiserver) tail -n "$lines" "$LOGS/kube-apiserver.log" ;;
	keycloak | idp) "$SCRIPT_DIR/idp.sh" logs "$lines" ;;
	*) die "unknown log '$1' (etcd, kube-apiserver, audit, keycloak)" ;;
	esac
}

# Stops or starts one daemon of a running control plane, keeping its state: the fault
# scenarios restart kube-apiserver and etcd under a running stepup.
cmd_restart() { # etcd|kube-apiserver [seconds down]
	local name=${1:-} down=${2:-0}
	case $name in
	etcd | kube-apiserver) ;;
	*) die "restart etcd|kube-apiserver [seconds down]" ;;
	esac
	stop_daemon "$name"
	sleep "$down"
	if [[ $name == etcd ]]; then start_etcd; else start_apiserver; fi
	log "$name restarted"
}

cmd_stop() { # etcd|kube-apiserver
	case ${1:-} in
	etcd | kube-apiserver) stop_daemon "$1" ;;
	*) die "stop etcd|kube-apiserver" ;;
	esac
}

cmd_start() { # etcd|kube-apiserver
	case ${1:-} in
	etcd) start_etcd ;;
	kube-apiserver) start_apiserver ;;
	*) die "start etcd|kube-apiserver" ;;
	esac
}

main() {
	local cmd=${1:-}
	shift || true
	case $cmd in
	up) cmd_up ;;
	restart) cmd_restart "$@" ;;
	stop) cmd_stop "$@" ;;
	start) cmd_start "$@" ;;
	down) cmd_down ;;
	status) cmd_status ;;
	env) cmd_env ;;
	env-file) echo "$ENV_FILE" ;;
	logs) cmd_logs "$@" ;;
	aggregate-roles) aggregate_cluster_roles ;;
	*)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
		exit 2
		;;
	esac
}

main "$@"
