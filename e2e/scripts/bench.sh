#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md, end to end: criterion benchmarks of the decision path,
# then a control plane of its own (separate state dir and ports, so it can run beside
# `make e2e`) with the release webhook, 10,000 policies and 100,000 grants, load runs
# against the webhook over TLS, memory, and write latency through kube-apiserver.
#
# Usage: bench.sh [all|decision|up|seed|memory|load|reads|e2e|churn|soak|stall|down]...   (default: all)
#   all       decision, up, seed, memory, load, reads, e2e, churn, memory, down
#   decision  cargo bench --bench decision
#   up        control plane + release webhook (cluster.sh, stepup.sh)
#   seed      load the fleet (stepup-load seed), restart the webhook so it lists it at once
#   memory    VmRSS / VmHWM of the webhook
#   load      the load runs (stepup-load run)
#   reads     the load runs of SubjectAccessReviews (/authorize: reads policies name)
#   e2e       ConfigMap update latency: no admission, kube-stepup, ValidatingAdmissionPolicy
#             (after seed: it edits the webhook registration, which the controller would revert)
#   churn     update / delete / re-create 30% of policies and grants
#   soak      every body at SOAK_RATE [200/s] for SOAK_DURATION [10m] while unrelated policies
#             and grants churn; per minute: wrong answers, latency, webhook RSS (RELIABILITY.md).
#             Seeds SOAK_SEED_POLICIES [1000] policies (0 after `seed`). Not part of `all`.
#   stall     the webhook's stdout throttled to STALL_LINES_PER_S [20] lines/s (a log pipeline
#             that cannot keep up), then closed-loop load on 16 connections for STALL_DURATION
#             [3m]: /healthz must answer every 5 s throughout and a review after; how many
#             audit lines went unprinted and records were dropped; a stack dump of every
#             thread (gdb) if anything hangs. Seeds STALL_SEED_POLICIES [1000] policies unless
#             `seed` ran. Restarts the webhook unthrottled at the end. Not part of `all`.
#   down      unregister and stop everything this script started
#
# Results (text and JSON lines) go to $BENCH_OUT [target/bench/<UTC date-time>].
# Environment (defaults in brackets): STEPUP_E2E_DIR [$STEPUP_CACHE/bench-run]
#   STEPUP_APISERVER_PORT [26443] STEPUP_ETCD_CLIENT_PORT [29790] STEPUP_ETCD_PEER_PORT [29800]
#   STEPUP_WEBHOOK_PORT [28443] STEPUP_WEBHOOK_ADMIN_PORT [28080] STEPUP_CONTROLLER_ADMIN_PORT [28081]
#   BENCH_DURATION [30s] measured time of each load run    BENCH_KEEP_UP [0] skip `down` in `all`
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
CACHE_ROOT=${STEPUP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-stepup}
export STEPUP_E2E_DIR=${STEPUP_E2E_DIR:-$CACHE_ROOT/bench-run}
export STEPUP_APISERVER_PORT=${STEPUP_APISERVER_PORT:-26443}
export STEPUP_ETCD_CLIENT_PORT=${STEPUP_ETCD_CLIENT_PORT:-29790}
export STEPUP_ETCD_PEER_PORT=${STEPUP_ETCD_PEER_PORT:-29800}
export STEPUP_WEBHOOK_PORT=${STEPUP_WEBHOOK_PORT:-28443}
export STEPUP_WEBHOOK_ADMIN_PORT=${STEPUP_WEBHOOK_ADMIN_PORT:-28080}
export STEPUP_CONTROLLER_ADMIN_PORT=${STEPUP_CONTROLLER_ADMIN_PORT:-28081}
export STEPUP_PROFILE=release
# Audit lines and events at info, as deployed; nothing else on the request path.
export RUST_LOG=${RUST_LOG:-info,kube=warn,hyper=warn,rustls=warn}
DURATION=${BENCH_DURATION:-30s}
OUT=${BENCH_OUT:-$REPO/target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
LOAD=$TARGET/release/stepup-load
JSON=$OUT/results.jsonl

log() { echo "bench: $*" >&2; }

note() { # what: appends a line with the time and load to the results
	echo "== $* [$(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)]" | tee -a "$OUT/summary.txt"
}

machine() {
	{
		echo "date: $(date -u +%FT%TZ)"
		echo "nproc: $(nproc)"
		echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
		echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
		echo "kernel: $(uname -r)"
		echo "rustc: $(rustc --version)"
		echo "commit: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet || echo ' (dirty)')"
		echo "uptime: $(uptime)"
	} | tee "$OUT/machine.txt"
}

webhook_pid() { cat "$STEPUP_E2E_DIR/pids/stepup-webhook.pid"; }

cmd_decision() {
	note "decision: cargo bench --bench decision"
	(cd "$REPO" && cargo bench --quiet --bench decision -- --noplot 2>&1) | tee "$OUT/decision.txt" |
		grep -E '^(decide|policy-index|index-build)|time:' | tee -a "$OUT/summary.txt"
}

cmd_up() {
	# Benchmarks measure stepup: no identity provider beside it.
	STEPUP_IDP=${STEPUP_IDP:-0} "$SCRIPT_DIR/cluster.sh" up
	"$SCRIPT_DIR/stepup.sh" up
	(cd "$REPO" && cargo build --quiet --release -p stepup-e2e --bin stepup-load)
}

webhook_rules_cover() { # resource: the controller has derived the registration from the policies
	"$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" get validatingwebhookconfiguration stepup.dev \
		-o 'jsonpath={.webhooks[*].rules[*].resources}' 2>/dev/null | grep -q "\"$1\""
}

cmd_seed() {
	# shellcheck disable=SC1090
	source "$("$SCRIPT_DIR/cluster.sh" env-file)"
	note "seed: stepup-load seed --only policies --policies 10000"
	"$LOAD" seed --only policies --policies 10000 2>&1 | tee -a "$OUT/summary.txt"
	# The controller registers the webhook with rules derived from the policies. Then it is
	# stopped: with an e2e grant retention of 60s it would garbage-collect the seeded grant
	# history (kept 30 days in a real install), and it and the certificate sync loop would
	# compete with the webhook for this machine's two cores during the measurements.
	local i
	for ((i = 0; i < 120; i++)); do webhook_rules_cover pods/exec && break; sleep 1; done
	webhook_rules_cover pods/exec || { log "the controller did not register the policies' rules"; exit 1; }
	"$SCRIPT_DIR/stepup.sh" controller-stop
	kill -TERM "$(cat "$STEPUP_E2E_DIR/pids/stepup-certsync.pid")" 2>/dev/null || true
	note "seed: stepup-load seed --only grants --grants 100000 --users 4000"
	"$LOAD" seed --only grants --policies 10000 --grants 100000 --users 4000 2>&1 | tee -a "$OUT/summary.txt"
	cmd_memory "after seeding (watch events, one by one)"
	# A webhook starting next to a full cluster lists everything at once: the usual case.
	"$SCRIPT_DIR/stepup.sh" webhook-restart
	"$LOAD" wait --policies 10000 --grants 100000 2>&1 | tee -a "$OUT/summary.txt"
	cmd_memory "after a restart (initial list of the full fleet)"
}

cmd_memory() { # [what]
	local pid
	pid=$(webhook_pid)
	note "memory ${1:-}: webhook pid $pid: $(grep -E '^(VmRSS|VmHWM)' "/proc/$pid/status" | tr -s ' \t' ' ' | paste -sd' ')"
	curl -fsS "http://127.0.0.1:$STEPUP_WEBHOOK_ADMIN_PORT/metrics" | grep '^stepup_cache_objects' | tee -a "$OUT/summary.txt"
}

load_run() { # label args...
	local label=$1
	shift
	note "load $label: stepup-load run $*"
	"$LOAD" run --duration "$DURATION" --json "$JSON" --label "$label" "$@" 2>&1 | tee -a "$OUT/summary.txt"
}

cmd_load() {
	local body
	for body in secret-delete deployment-update exec secret-update-dev; do
		load_run "1000/s $body" --rate 1000 --connections 4 --body "$body"
	done
	load_run "1000/s mix" --rate 1000 --connections 4
	# Each denial first asks the API server for the user's grants (a LIST by label among
	# 100,000 grants, ~0.2 s): a low rate, or the run measures queueing.
	load_run "2/s denied" --rate 2 --connections 2 --body secret-denied
	load_run "5000/s mix" --rate 5000 --connections 8
	load_run "new connection 100/s" --rate 100 --connections 4 --mode new-connection
	load_run "new connection 500/s" --rate 500 --connections 8 --mode new-connection
	load_run "saturation closed loop 4" --rate 0 --connections 4
	load_run "saturation closed loop 16" --rate 0 --connections 16
	load_run "saturation closed loop 4 new connection" --rate 0 --connections 4 --mode new-connection
	load_run "10000/s mix" --rate 10000 --connections 16
	load_run "20000/s mix" --rate 20000 --connections 16
}

cmd_reads() {
	# What the API server's authorization webhook sends: a granted read of a prod Secret (the
	# team's policy names reads), a read no policy names, and a denied list (after the direct
	# grant lookup, as for writes: a low rate).
	load_run "1000/s secret-read" --rate 1000 --connections 4 --body secret-read
	load_run "1000/s secret-read-dev" --rate 1000 --connections 4 --body secret-read-dev
	load_run "2/s read denied" --rate 2 --connections 2 --body secret-read-denied
	load_run "saturation closed loop 4 secret-read" --rate 0 --connections 4 --body secret-read
}

cmd_e2e() {
	note "e2e: stepup-load e2e --iterations 2000"
	"$LOAD" e2e --iterations 2000 --json "$JSON" 2>&1 | tee -a "$OUT/summary.txt"
}

cmd_churn() {
	note "churn: stepup-load churn --fraction 0.3"
	"$LOAD" churn --fraction 0.3 2>&1 | tee -a "$OUT/summary.txt"
	cmd_memory "after churning 30% of policies and grants"
}

cmd_soak() { # a steady rate under churn for SOAK_DURATION (10m); seeds 1,000 policies unless `seed` ran
	# shellcheck disable=SC1090
	source "$("$SCRIPT_DIR/cluster.sh" env-file)"
	local seed=${SOAK_SEED_POLICIES:-1000}
	note "soak: stepup-load soak --duration ${SOAK_DURATION:-10m} --window 1m --rate ${SOAK_RATE:-200} --seed-policies $seed"
	"$LOAD" soak --duration "${SOAK_DURATION:-10m}" --window 1m --rate "${SOAK_RATE:-200}" --connections 2 \
		--seed-policies "$seed" --json "$JSON" 2>&1 | tee -a "$OUT/summary.txt"
}

stack_dump() { # why: every thread's stack of the webhook, into the results
	local pid
	pid=$(webhook_pid)
	note "stall: $1; stacks of webhook pid $pid in $OUT/stall-stacks.txt"
	timeout 60 gdb -p "$pid" -batch -ex "thread apply all bt" >"$OUT/stall-stacks.txt" 2>&1 || true
}

metric() { # name: its value on the webhook's admin port, summed over labels
	curl -fsS --max-time 5 "http://127.0.0.1:$STEPUP_WEBHOOK_ADMIN_PORT/metrics" |
		awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}

cmd_stall() {
	# shellcheck disable=SC1090
	source "$("$SCRIPT_DIR/cluster.sh" env-file)"
	local rate=${STALL_LINES_PER_S:-20} duration=${STALL_DURATION:-3m} seed=${STALL_SEED_POLICIES:-1000}
	if ((seed > 0)); then
		"$LOAD" seed --only policies --policies "$seed" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
	fi
	STEPUP_WEBHOOK_STDOUT_LINES_PER_S=$rate "$SCRIPT_DIR/stepup.sh" webhook-restart
	note "stall: stdout at $rate lines/s; stepup-load run --rate 0 --connections 16 --duration $duration"
	"$LOAD" run --rate 0 --connections 16 --duration "$duration" --json "$JSON" --label "stall $rate lines/s" \
		>"$OUT/stall-load.txt" 2>&1 &
	local load=$! hung=0 polls=0 slowest=0 t0 ms
	while kill -0 "$load" 2>/dev/null; do
		t0=$(date +%s%N)
		if ! curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$STEPUP_WEBHOOK_ADMIN_PORT/healthz"; then
			hung=1
			stack_dump "/healthz did not answer within 5 s under load"
			break
		fi
		ms=$((($(date +%s%N) - t0) / 1000000))
		((ms > slowest)) && slowest=$ms
		polls=$((polls + 1))
		sleep 5
	done
	if ((hung)); then
		kill "$load" 2>/dev/null || true
	elif ! wait "$load"; then
		hung=1
		stack_dump "the load run failed"
	fi
	tee -a "$OUT/summary.txt" <"$OUT/stall-load.txt"
	note "stall: /healthz answered $polls polls under load, slowest $slowest ms"
	# After the load: a review is still answered, and what was lost is counted.
	if ! timeout 60 "$LOAD" run --rate 10 --connections 1 --duration 5s --warmup 1s >"$OUT/stall-after.txt" 2>&1; then
		hung=1
		stack_dump "no review answered after the load"
	fi
	note "stall: after the load: $(tail -1 "$OUT/stall-after.txt")"
	note "stall: audit lines unprinted $(metric stepup_audit_lines_unprinted_total), records dropped $(metric stepup_audit_records_dropped_total), segment writes ok $(metric 'stepup_audit_segment_writes_total{result="success"}'), webhook RSS $(grep VmRSS "/proc/$(webhook_pid)/status" | tr -s ' \t' ' ')"
	"$SCRIPT_DIR/stepup.sh" webhook-restart
	((hung == 0)) || { log "stall: the webhook hung; see $OUT/stall-stacks.txt"; exit 1; }
}

cmd_down() {
	"$SCRIPT_DIR/stepup.sh" down || true
	"$SCRIPT_DIR/cluster.sh" down
}

main() {
	mkdir -p "$OUT"
	log "results in $OUT"
	local steps=("$@")
	((${#steps[@]})) || steps=(all)
	machine >/dev/null
	for step in "${steps[@]}"; do
		case $step in
		all)
			cmd_decision
			cmd_up
			cmd_seed
			cmd_load
			cmd_reads
			cmd_e2e
			cmd_churn
			[[ ${BENCH_KEEP_UP:-0} == 1 ]] || cmd_down
			;;
		decision | up | seed | memory | load | reads | e2e | churn | soak | stall | down) "cmd_$step" ;;
		*)
			sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
			exit 2
			;;
		esac
	done
	log "results in $OUT"
}

main "$@"
