# kube-stepup developer commands. `make test` is what CI runs (.ci/run).

CARGO ?= cargo

.PHONY: test lint unit core-deps layers e2e e2e-up e2e-one e2e-restart e2e-down crds demo demo-down controlplane bench dist help

help:
	@echo "make demo       start the local demo (control plane + stepup + example policies)"
	@echo "make demo-down  stop it"
	@echo "make test       every check and test: lint, unit, integration, e2e"
	@echo "make unit       unit and integration tests (no cluster)"
	@echo "make e2e        end-to-end scenarios against a real kube-apiserver"
	@echo "make e2e-up     start the e2e control plane and stepup, and keep them running"
	@echo "make e2e-one T=evidence [F=test_name]  one scenario file (or test) against e2e-up"
	@echo "make e2e-restart  rebuild stepup and restart only its processes"
	@echo "make e2e-down   stop what e2e-up started"
	@echo "make lint       rustfmt, clippy, CRD drift, helm lint, manifest drift, alert rules (promtool)"
	@echo "make crds       regenerate crds/ from the Rust types"
	@echo "make bench      every benchmark of BENCHMARKS.md (about 30 minutes; own control plane)"
	@echo "make dist       the release: static binaries, chart package, krew manifest, SBOM, sums, notes (dist/)"

test: lint unit e2e

lint: chart-lint rules-lint core-deps layers
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) run --quiet --bin stepup -- crdgen | diff -u crds/stepup.dev.yaml - \
		|| (echo "crds/ is out of date: run make crds" >&2; exit 1)

unit:
	$(CARGO) test

# The decision core stays pure: no async runtime, HTTP stack, TLS or Kubernetes client in its
# dependency tree (normal dependencies; its tests may use more).
CORE_FORBIDDEN := tokio hyper hyper-util h2 axum tower rustls tokio-rustls kube kube-client kube-runtime reqwest
core-deps:
	@tree=$$($(CARGO) tree -p stepup-core -e normal --prefix none | sed 's/ .*//' | sort -u); \
	bad=$$(for c in $(CORE_FORBIDDEN); do echo "$$tree" | grep -qx "$$c" && echo "$$c"; done; true); \
	if [ -n "$$bad" ]; then echo "stepup-core depends on $$bad: the core must do no I/O (see core/Cargo.toml)" >&2; exit 1; fi; \
	echo "stepup-core: $$(echo "$$tree" | wc -l) crates, none of: $(CORE_FORBIDDEN)"

# What the shells share (startup errors, config, metrics, evidence, records, PKI, ...) imports
# no shell: the webhook, the controller and the plugin depend on it, never the reverse.
SHARED := src/audit.rs src/config.rs src/error.rs src/evidence.rs src/metrics.rs \
	src/pki.rs src/process.rs src/telemetry.rs src/records
layers:
	@if grep -rnE 'crate::(admission|controller|plugin)\b' $(SHARED); then \
		echo "a shared module imports a shell (above): move what both need into the shared module" >&2; exit 1; fi

e2e:
	e2e/scripts/run-e2e.sh

# The inner loop: bring everything up once, then rebuild and restart only stepup after a change,
# and run one scenario file (or one test of it) against what is running.
e2e-up:
	e2e/scripts/cluster.sh up
	e2e/scripts/stepup.sh up

T ?= $(error name a scenario file of e2e/tests: make e2e-one T=evidence)
e2e-one:
	timeout 1800 $(CARGO) test -p stepup-e2e --test $(T) -- --test-threads=1 $(F)

e2e-restart:
	e2e/scripts/stepup.sh restart

e2e-down:
	e2e/scripts/stepup.sh down
	e2e/scripts/cluster.sh down

crds:
	$(CARGO) run --quiet --bin stepup -- crdgen > crds/stepup.dev.yaml
	cp crds/stepup.dev.yaml charts/stepup/crds/stepup.dev.yaml

# Decision, load, memory and end-to-end benchmarks; results under target/bench/.
bench:
	e2e/scripts/bench.sh all

controlplane:
	e2e/scripts/build-controlplane.sh

dist:
	hack/dist.sh --out dist

demo:
	e2e/scripts/demo.sh up

demo-down:
	e2e/scripts/demo.sh down

# ---------------------------------------------------------------- Helm chart and plain manifests

.PHONY: chart-lint manifests

# helm from the pinned control-plane build (built on first use, cached; looked up once).
ifeq ($(origin HELM),undefined)
HELM = $(eval HELM := $$(shell e2e/scripts/build-controlplane.sh)/helm)$(HELM)
endif
CHART := charts/stepup

chart-lint:
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/all-features-values.yaml
	$(HELM) template stepup $(CHART) -n stepup-system --include-crds >/dev/null
	$(HELM) template stepup $(CHART) -n stepup-system --include-crds -f $(CHART)/ci/all-features-values.yaml >/dev/null
	@# Values the binaries would refuse at start are refused at install, naming the value.
	@for bad in session.signInExtras.acr=ACR session.signInExtras.amr=sso.k8s.io/amr session.signInExtras.authTime=auth-time; do \
		out=$$($(HELM) template stepup $(CHART) -n stepup-system --set $$bad 2>&1) && { echo "chart accepted --set $$bad"; exit 1; }; \
		echo "$$out" | grep -q "session/signInExtras" || { echo "chart refused --set $$bad without naming it: $$out"; exit 1; }; \
	done
	@out=$$($(HELM) template stepup $(CHART) -n stepup-system -f $(CHART)/ci/all-features-values.yaml --set oidc.confidentialClient.secretName= 2>&1) \
		&& { echo "chart accepted a confidential client without its Secret"; exit 1; } \
		|| echo "$$out" | grep -q "oidc.confidentialClient.secretName" || { echo "$$out"; exit 1; }
	HELM=$(HELM) hack/render-manifests.sh --check

manifests:
	HELM=$(HELM) hack/render-manifests.sh

# ---------------------------------------------------------------- Alert rules and dashboard

.PHONY: rules-lint

# promtool from the pinned module in hack/promtool (built on first use, cached; looked up once).
ifeq ($(origin PROMTOOL),undefined)
PROMTOOL = $(eval PROMTOOL := $$(shell hack/build-promtool.sh))$(PROMTOOL)
endif
RULES := $(CHART)/files/prometheus-rules.yaml
DASHBOARD := $(CHART)/files/grafana-dashboard.json

# The rules file must pass promtool's checks and unit tests, the dashboard's queries must parse
# (its JSON and metric names are checked by the metrics unit tests), and the chart must ship
# both files byte for byte.
rules-lint:
	$(PROMTOOL) check rules $(RULES)
	$(PROMTOOL) test rules $(CHART)/files/prometheus-rules.test.yaml
	PROMTOOL=$(PROMTOOL) hack/check-dashboard-queries.sh $(DASHBOARD)
	$(HELM) template stepup $(CHART) -n stepup-system -f $(CHART)/ci/all-features-values.yaml \
		--show-only templates/prometheusrule.yaml | sed '1,/^spec:$$/d; s/^  //' | diff -u $(RULES) - \
		|| (echo "the chart's PrometheusRule differs from $(RULES)" >&2; exit 1)
	$(HELM) template stepup $(CHART) -n stepup-system -f $(CHART)/ci/all-features-values.yaml \
		--show-only templates/grafana-dashboard.yaml | sed '1,/^  kube-stepup.json: |-$$/d; s/^    //' | diff -u $(DASHBOARD) - \
		|| (echo "the chart's dashboard ConfigMap differs from $(DASHBOARD)" >&2; exit 1)
