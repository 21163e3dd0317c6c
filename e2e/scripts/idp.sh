#!/usr/bin/env bash
# The e2e tests' identity provider: Keycloak, fetched once with Maven's own client and cached
# outside the repo (like the control plane), served with TLS on a free loopback port, with the
# realm e2e/idp/stepup-realm.json imported (alice and bob, passwords and TOTP credentials the
# tests know; acr 1 = password, 2 = password and OTP; amr mapped). cluster.sh starts it before
# the API server, which trusts it through its AuthenticationConfiguration.
#
# Usage: idp.sh fetch|start|wait|up|down|status|env|logs [lines]|token USER
#   fetch   download and unpack Keycloak into the cache (nothing else)
#   start   start it (fresh state) without waiting; writes the env file (issuer, port)
#   wait    wait until the realm's discovery document answers over TLS
#   up      start and wait
#   down    stop it
#   token   print an ID token of USER (alice, bob) signed in with the password (acr 1)
#
# Needs the cluster's CA ($STEPUP_E2E_DIR/pki/ca.key): it signs Keycloak's serving certificate.
# Environment: STEPUP_CACHE, STEPUP_E2E_DIR (as cluster.sh), STEPUP_IDP_READY_TIMEOUT [240]
# seconds, JAVA_HOME (else Java 17 or 25 under /usr/lib/jvm, else the java on PATH).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
CACHE_ROOT=${STEPUP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup}
DIR=${STEPUP_E2E_DIR:-$CACHE_ROOT/e2e-run}
HOST=127.0.0.1
KEYCLOAK_VERSION=26.7.3
KC_CACHE=$CACHE_ROOT/keycloak
KC_HOME=$KC_CACHE/keycloak-$KEYCLOAK_VERSION
STATE=$DIR/idp
PKI=$DIR/pki
PIDFILE=$STATE/keycloak.pid
ENV_FILE=$STATE/env
LOG=$STATE/keycloak.log
REALM_FILE=$REPO/e2e/idp/stepup-realm.json
REALM=stepup
CLIENT_ID=kubectl-stepup
READY_TIMEOUT=${STEPUP_IDP_READY_TIMEOUT:-240}

log() { echo "idp: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

fetch() {
	[[ -x $KC_HOME/bin/kc.sh ]] && return
	command -v mvn >/dev/null || die "Maven (mvn) is required to fetch Keycloak; .ci/setup installs it"
	command -v unzip >/dev/null || die "unzip is required; .ci/setup installs it"
	local artifact=org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip repo=$KC_CACHE/m2
	log "fetching Keycloak $KEYCLOAK_VERSION (once; cached in $KC_CACHE)"
	mkdir -p "$KC_CACHE"
	mvn -B -q -Dmaven.repo.local="$repo" dependency:get -Dartifact="$artifact" -Dtransitive=false >&2 ||
		die "Maven could not fetch $artifact"
	local zip=$repo/org/keycloak/keycloak-quarkus-dist/$KEYCLOAK_VERSION/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip
	local tmp
	tmp=$(mktemp -d "$KC_CACHE/unpack.XXXXXX")
	unzip -q "$zip" -d "$tmp"
	rm -rf "$KC_HOME"
	mv "$tmp/keycloak-$KEYCLOAK_VERSION" "$KC_HOME"
	rmdir "$tmp"
	rm -f "$zip" # unpacked: the 170 MB archive is not needed again
}

java_home() {
	if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
		echo "$JAVA_HOME"
		return
	fi
	local d
	for d in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64 /usr/lib/jvm/temurin-25-jdk-amd64; do
		[[ -x $d/bin/java ]] && { echo "$d"; return; }
	done
	local java
	java=$(command -v java) || die "Java 17 or later is required to run Keycloak"
	java=$(readlink -f "$java")
	echo "${java%/bin/java}"
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# A port nobody listens on now, from a range below the ephemeral ports (a fixed port collided
# with the e2e processes once).
free_port() {
	local port i
	for ((i = 0; i < 100; i++)); do
		port=$((20000 + RANDOM % 9000))
		port_in_use "$port" || { echo "$port"; return; }
	done
	die "no free port found"
}

running_pid() {
	local pid
	[[ -f $PIDFILE ]] || return 1
	pid=$(<"$PIDFILE")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
	echo "$pid"
}

# Keycloak's serving certificate, signed by the cluster's CA (the API server and the tests trust
# that CA already).
gen_cert() {
	[[ -f $PKI/ca.crt && -f $PKI/ca.key ]] || die "no cluster CA in $PKI: run cluster.sh up (it starts the IdP)"
	openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$STATE/tls.key" -out "$STATE/tls.csr" \
		-subj "/CN=keycloak" 2>/dev/null
	cat >"$STATE/tls.ext" <<-EOF
		basicConstraints=critical,CA:FALSE
		keyUsage=critical,digitalSignature,keyEncipherment
		extendedKeyUsage=serverAuth
		subjectAltName=IP:127.0.0.1,DNS:localhost
	EOF
	openssl x509 -req -sha256 -days 30 -in "$STATE/tls.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
		-CAcreateserial -extfile "$STATE/tls.ext" -out "$STATE/tls.crt" 2>/dev/null
	chmod 600 "$STATE/tls.key"
}

cmd_start() {
	fetch
	cmd_down >/dev/null 2>&1 || true
	# Keycloak keeps its database in the cached install: one may run from it at a time.
	local other
	if other=$(pgrep -f -- "-Dkc.home.dir=$KC_HOME/bin/.. " | head -n 1) && [[ -n $other ]]; then
		die "another Keycloak runs from $KC_HOME (pid $other, from another e2e directory?): stop it first"
	fi
	rm -rf "$STATE"
	mkdir -p "$STATE"
	chmod 700 "$STATE"
	gen_cert
	local port http_port password java
	port=$(free_port)
	# Development mode serves plain HTTP too, whatever --http-enabled says: on a second free
	# port (its default, 8080, may be taken), loopback only, unused by the tests.
	http_port=$(free_port)
	[[ $http_port != "$port" ]] || http_port=$((port + 1))
	password=$(openssl rand -hex 16)
	java=$(java_home)
	echo "$password" >"$STATE/admin-password"
	chmod 600 "$STATE/admin-password"
	# Fresh state every start: the H2 database and the import directory live in the install.
	rm -rf "$KC_HOME/data"
	mkdir -p "$KC_HOME/data/import"
	cp "$REALM_FILE" "$KC_HOME/data/import/$REALM-realm.json"
	{
		echo "# kube-stepup e2e identity provider; source this file."
		printf 'export STEPUP_IDP_ISSUER=%q\n' "https://$HOST:$port/realms/$REALM"
		printf 'export STEPUP_IDP_PORT=%q\n' "$port"
		printf 'export STEPUP_IDP_CA_FILE=%q\n' "$PKI/ca.crt"
		printf 'export STEPUP_IDP_CLIENT_ID=%q\n' "$CLIENT_ID"
		printf 'export STEPUP_IDP_REALM_FILE=%q\n' "$REALM_FILE"
		printf 'export STEPUP_IDP_ADMIN_PASSWORD_FILE=%q\n' "$STATE/admin-password"
		printf 'export STEPUP_IDP_LOG=%q\n' "$LOG"
	} >"$ENV_FILE"
	log "starting Keycloak $KEYCLOAK_VERSION on https://$HOST:$port (Java in $java)"
	# Its own process group (setsid), so that `down` stops kc.sh and the JVM together.
	JAVA_HOME=$java KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD=$password \
		JAVA_OPTS_APPEND="-Xms64m -Xmx512m" \
		setsid "$KC_HOME/bin/kc.sh" start-dev --import-realm \
		--http-host="$HOST" --http-port="$http_port" --https-port="$port" \
		--https-certificate-file="$STATE/tls.crt" --https-certificate-key-file="$STATE/tls.key" \
		</dev/null >"$LOG" 2>&1 &
	echo $! >"$PIDFILE"
}

discovery_answers() {
	local issuer
	issuer=$(. "$ENV_FILE" && echo "$STEPUP_IDP_ISSUER")
	curl -fsS --noproxy '*' --max-time 3 --cacert "$PKI/ca.crt" "$issuer/.well-known/openid-configuration" 2>/dev/null |
		grep -q "\"issuer\":\"$issuer\""
}

cmd_wait() {
	[[ -f $ENV_FILE ]] || die "not started: no $ENV_FILE"
	local deadline=$((SECONDS + READY_TIMEOUT)) start=$SECONDS
	until discovery_answers; do
		if ! running_pid >/dev/null || ((SECONDS >= deadline)); then
			log "Keycloak did not come up (waited $((SECONDS - start))s); last lines of $LOG:"
			tail -n 40 "$LOG" >&2 || true
			exit 1
		fi
		sleep 0.5
	done
	log "Keycloak answers after $((SECONDS - start))s: $(. "$ENV_FILE" && echo "$STEPUP_IDP_ISSUER")"
}

# An ID token for a password-only sign-in (acr 1) through the login page, as a browser would
# (authorization code with PKCE); the e2e tests sign in with the OTP form too (e2e/src/idp.rs).
cmd_token() { # user
	local user=${1:?usage: idp.sh token USER} issuer client password jar verifier challenge auth page action
	[[ -f $ENV_FILE ]] || die "not started: no $ENV_FILE"
	issuer=$(. "$ENV_FILE" && echo "$STEPUP_IDP_ISSUER")
	password=$(realm_password "$user")
	jar=$(mktemp "$STATE/jar.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -f '$jar' '$jar.h'" RETURN
	verifier=$(openssl rand -hex 32)
	challenge=$(printf %s "$verifier" | openssl dgst -sha256 -binary | openssl base64 -A | tr '+/' '-_' | tr -d '=')
	local redirect=http://127.0.0.1:38000/callback
	auth="$issuer/protocol/openid-connect/auth?client_id=$CLIENT_ID&response_type=code&scope=openid"
	auth+="&redirect_uri=http%3A%2F%2F127.0.0.1%3A38000%2Fcallback&code_challenge=$challenge"
	auth+="&code_challenge_method=S256&state=e2e&acr_values=1"
	local c=(curl -fsS --noproxy '*' --max-time 10 --cacert "$PKI/ca.crt" -c "$jar" -b "$jar")
	page=$("${c[@]}" "$auth")
	action=$(grep -o '<form id="kc-form-login"[^>]*action="[^"]*"' <<<"$page" | sed 's/.*action="//; s/"$//; s/&amp;/\&/g')
	[[ -n $action ]] || die "no login form at $issuer"
	"${c[@]}" -D "$jar.h" -o /dev/null --data-urlencode "username=$user" --data-urlencode "password=$password" "$action"
	local code
	code=$(tr -d '\r' <"$jar.h" | sed -n 's/^[Ll]ocation: .*[?&]code=\([^&]*\).*/\1/p')
	[[ -n $code ]] || die "$user was not signed in (no code in the redirect)"
	"${c[@]}" "$issuer/protocol/openid-connect/token" -d grant_type=authorization_code -d "client_id=$CLIENT_ID" \
		--data-urlencode "code=$code" --data-urlencode "redirect_uri=$redirect" -d "code_verifier=$verifier" |
		sed -n 's/.*"id_token":"\([^"]*\)".*/\1/p'
}

# A user's password in the realm file (a test fixture): the first password value after the
# user's name (one JSON field per line there).
realm_password() { # user
	local password
	password=$(sed -n "/\"username\": \"$1\"/,/\"type\": \"password\"/p" "$REALM_FILE" |
		sed -n 's/.*"type": "password", "value": "\([^"]*\)".*/\1/p' | head -n 1)
	[[ -n $password ]] || die "no password for $1 in $REALM_FILE"
	echo "$password"
}

cmd_down() {
	local pid i
	if pid=$(running_pid); then
		log "stopping Keycloak (pid $pid)"
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$pid" 2>/dev/null || true
	fi
	rm -f "$PIDFILE"
}

cmd_status() {
	if running_pid >/dev/null && [[ -f $ENV_FILE ]] && discovery_answers; then
		echo "keycloak: up ($(. "$ENV_FILE" && echo "$STEPUP_IDP_ISSUER"))"
	else
		echo "keycloak: down"
		return 1
	fi
}

main() {
	case ${1:-} in
	fetch) fetch ;;
	start) cmd_start ;;
	wait) cmd_wait ;;
	up)
		cmd_start
		cmd_wait
		;;
	down) cmd_down ;;
	status) cmd_status ;;
	env)
		[[ -f $ENV_FILE ]] || die "no env file at $ENV_FILE"
		cat "$ENV_FILE"
		;;
	env-file) echo "$ENV_FILE" ;;
	token) cmd_token "${2:-}" ;;
	logs) tail -n "${2:-60}" "$LOG" ;;
	*)
		sed -n '2,18p' "$0" >&2
		exit 2
		;;
	esac
}

main "$@"
