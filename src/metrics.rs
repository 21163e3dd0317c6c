//! Prometheus metrics (no I/O: counters and their text rendering), `stepup_` prefix, base
//! units, and labels of bounded cardinality (never a username). Each process registers only
//! the families it reports, so that a value it never sets cannot read as an alarm.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};

/// The process whose `/metrics` a registry serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    Webhook,
    Controller,
}

/// Review latency buckets from 100 µs: the decision itself takes nanoseconds, a direct grant
/// lookup milliseconds; the API server's own admission buckets start at 5 ms.
pub const REVIEW_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reviews by decision (`granted`, `denied`, ...) and policy (`none` when no policy).
    pub reviews: IntCounterVec,
    /// SubjectAccessReviews answered (policies' verbs: reads first), by decision and policy.
    pub authorizations: IntCounterVec,
    pub review_duration: HistogramVec,
    /// Requests that could not be answered normally, by reason.
    pub review_errors: IntCounterVec,
    /// Direct grant lookups against the API server, by result.
    pub grant_lookups: IntCounterVec,
    pub break_glass: IntCounter,
    /// 1 when a cache's watch has synced and is healthy.
    pub cache_synced: IntGaugeVec,
    pub cache_objects: IntGaugeVec,
    /// Watches found stalled (silent past their bound) and relisted, by cache.
    pub watch_stalls: IntCounterVec,
    /// Certificate reloads by result.
    pub certificate_reloads: IntCounterVec,
    /// Not-after of the certificate being served, in Unix seconds (alert well before it).
    pub certificate_expiry: IntGauge,
    /// Events published, suppressed by rate limiting, or failed.
    pub events: IntCounterVec,
    /// Verified challenges by method and result (controller).
    pub challenges: IntCounterVec,
    pub grants_issued: IntCounterVec,
    pub grants_active: IntGauge,
    pub lockouts: IntCounter,
    /// Grants seen without a valid controller signature (written by someone else), ignored.
    pub forged_grants: IntCounter,
    /// Audit records dropped because the writer's queue was full or the API server was out of
    /// reach for too long (never silent).
    pub audit_records_dropped: IntCounter,
    /// Audit lines not printed to stdout because it could not keep up; the durable segments
    /// hold their records.
    pub audit_lines_unprinted: IntCounter,
    /// Writes of the durable audit segments (StepUpLog), by result.
    pub audit_segment_writes: IntCounterVec,
    /// Enrollment, approval, unlock and bootstrap steps, by step and result (controller).
    pub factor_steps: IntCounterVec,
    /// Challenges refused at admission by the per-user limits, by limit (webhook).
    pub challenge_limit_refusals: IntCounterVec,
    /// Reconcile failures by controller and error kind.
    pub reconcile_errors: IntCounterVec,
    /// 1 while this replica holds the controller Lease.
    pub leader: IntGauge,
    /// 1 while an object stepup's protection rests on exists (CRDs, webhook configuration,
    /// admission policies and bindings), by `Kind/name`.
    pub protection_intact: IntGaugeVec,
    build_info: IntGaugeVec,
}

impl Metrics {
    /// The families `stepup webhook` reports.
    pub fn webhook() -> Self {
        let metrics = Self::unregistered();
        metrics.register(Process::Webhook);
        // A watch that has not synced yet reads 0 from the start, rather than being absent
        // until its first list completes (a replica stuck there must show, and alert).
        for kind in CacheKind::ALL {
            metrics.cache_synced.with_label_values(&[kind.as_str()]).set(0);
        }
        metrics
    }

    /// The families `stepup controller` reports.
    pub fn controller() -> Self {
        let metrics = Self::unregistered();
        metrics.register(Process::Controller);
        metrics
    }

    /// Every family, none registered yet. One type serves both processes so that shared code
    /// (Events, grant signatures) takes one `Metrics`; a family a process does not register
    /// would change a value no scrape shows (the tests keep that to none).
    fn unregistered() -> Self {
        let registry = Registry::new();
        let reviews = IntCounterVec::new(
            Opts::new("stepup_admission_reviews_total", "Admission reviews answered, by decision and policy."),
            &["decision", "policy"],
        )
        .expect("valid metric");
        let authorizations = IntCounterVec::new(
            Opts::new(
                "stepup_authorization_reviews_total",
                "SubjectAccessReviews answered (what policies name with verbs), by decision and policy.",
            ),
            &["decision", "policy"],
        )
        .expect("valid metric");
        let review_duration = HistogramVec::new(
            HistogramOpts::new("stepup_admission_review_duration_seconds", "Time to answer an admission review.")
                .buckets(REVIEW_BUCKETS.to_vec()),
            &["decision"],
        )
        .expect("valid metric");
        let review_errors = IntCounterVec::new(
            Opts::new(
                "stepup_admission_review_errors_total",
                "Admission requests that were malformed, too large or timed out.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let grant_lookups = IntCounterVec::new(
            Opts::new("stepup_grant_lookups_total", "Direct grant lookups against the API server after a cache miss."),
            &["result"],
        )
        .expect("valid metric");
        let break_glass =
            IntCounter::new("stepup_break_glass_total", "Requests allowed by break-glass group membership.")
                .expect("valid metric");
        let cache_synced = IntGaugeVec::new(
            Opts::new("stepup_cache_synced", "1 when the watch behind a cache has synced and is healthy."),
            &["cache"],
        )
        .expect("valid metric");
        let cache_objects = IntGaugeVec::new(Opts::new("stepup_cache_objects", "Objects held in a cache."), &["cache"])
            .expect("valid metric");
        let watch_stalls = IntCounterVec::new(
            Opts::new("stepup_watch_stalls_total", "Watches that went silent past their bound and were relisted."),
            &["cache"],
        )
        .expect("valid metric");
        let certificate_reloads = IntCounterVec::new(
            Opts::new("stepup_certificate_reloads_total", "Serving certificate reloads, by result."),
            &["result"],
        )
        .expect("valid metric");
        let certificate_expiry = IntGauge::new(
            "stepup_certificate_expiry_timestamp_seconds",
            "Expiry of the serving certificate, Unix seconds.",
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new("stepup_events_total", "Kubernetes Events, by result (published, rate_limited, failed)."),
            &["result"],
        )
        .expect("valid metric");
        let challenges = IntCounterVec::new(
            Opts::new("stepup_challenges_total", "Challenges verified, by method and result."),
            &["method", "result"],
        )
        .expect("valid metric");
        let grants_issued =
            IntCounterVec::new(Opts::new("stepup_grants_issued_total", "Grants issued, by method."), &["method"])
                .expect("valid metric");
        let grants_active = IntGauge::new("stepup_grants_active", "Grants currently usable.").expect("valid metric");
        let lockouts = IntCounter::new("stepup_lockouts_total", "Users locked after too many failed verifications.")
            .expect("valid metric");
        let forged_grants = IntCounter::new(
            "stepup_forged_grants_total",
            "Grants without a valid controller signature, seen and ignored (someone other than the controller wrote them).",
        )
        .expect("valid metric");
        let audit_records_dropped = IntCounter::new(
            "stepup_audit_records_dropped_total",
            "Audit records dropped: the writer's queue was full, or more were pending than the API server took.",
        )
        .expect("valid metric");
        let audit_lines_unprinted = IntCounter::new(
            "stepup_audit_lines_unprinted_total",
            "Audit lines not printed to stdout because it could not keep up; the durable audit segments (StepUpLog) hold their records.",
        )
        .expect("valid metric");
        let audit_segment_writes = IntCounterVec::new(
            Opts::new("stepup_audit_segment_writes_total", "Writes of durable audit segments (StepUpLog), by result."),
            &["result"],
        )
        .expect("valid metric");
        let factor_steps = IntCounterVec::new(
            Opts::new(
                "stepup_factor_steps_total",
                "Steps in the life of a factor (enrollment, approval, unlock, lockout, bootstrap, withdrawal), by step and result.",
            ),
            &["step", "result"],
        )
        .expect("valid metric");
        let challenge_limit_refusals = IntCounterVec::new(
            Opts::new(
                "stepup_challenge_limit_refusals_total",
                "Challenges refused at admission by the per-user limits, by limit (too_many_pending, creation_rate).",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new("stepup_reconcile_errors_total", "Reconcile failures, by controller and error kind."),
            &["controller", "error"],
        )
        .expect("valid metric");
        let leader =
            IntGauge::new("stepup_leader", "1 while this replica holds the controller lease.").expect("valid metric");
        let protection_intact = IntGaugeVec::new(
            Opts::new(
                "stepup_protection_intact",
                "1 while an object kube-stepup's protection rests on exists, 0 when it has been removed.",
            ),
            &["object"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(Opts::new("stepup_build_info", "Build information; always 1."), &["version"])
            .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        Self {
            registry,
            reviews,
            authorizations,
            review_duration,
            review_errors,
            grant_lookups,
            break_glass,
            cache_synced,
            cache_objects,
            watch_stalls,
            certificate_reloads,
            certificate_expiry,
            events,
            challenges,
            grants_issued,
            grants_active,
            lockouts,
            forged_grants,
            audit_records_dropped,
            audit_lines_unprinted,
            audit_segment_writes,
            factor_steps,
            challenge_limit_refusals,
            reconcile_errors,
            leader,
            protection_intact,
            build_info,
        }
    }

    fn register(&self, process: Process) {
        for collector in self.families(process) {
            self.registry.register(collector).expect("metric names are unique");
        }
    }

    /// The families `process` reports: README's metric table lists exactly these (tested).
    fn families(&self, process: Process) -> Vec<Box<dyn Collector>> {
        let mut both: Vec<Box<dyn Collector>> = vec![
            Box::new(self.events.clone()),
            Box::new(self.grants_active.clone()),
            Box::new(self.forged_grants.clone()),
            Box::new(self.audit_records_dropped.clone()),
            Box::new(self.audit_lines_unprinted.clone()),
            Box::new(self.audit_segment_writes.clone()),
            Box::new(self.build_info.clone()),
        ];
        let own: Vec<Box<dyn Collector>> = match process {
            Process::Webhook => vec![
                Box::new(self.reviews.clone()),
                Box::new(self.authorizations.clone()),
                Box::new(self.review_duration.clone()),
                Box::new(self.review_errors.clone()),
                Box::new(self.grant_lookups.clone()),
                Box::new(self.break_glass.clone()),
                Box::new(self.cache_synced.clone()),
                Box::new(self.cache_objects.clone()),
                Box::new(self.watch_stalls.clone()),
                Box::new(self.certificate_reloads.clone()),
                Box::new(self.certificate_expiry.clone()),
                Box::new(self.challenge_limit_refusals.clone()),
            ],
            Process::Controller => vec![
                Box::new(self.challenges.clone()),
                Box::new(self.grants_issued.clone()),
                Box::new(self.lockouts.clone()),
                Box::new(self.factor_steps.clone()),
                Box::new(self.reconcile_errors.clone()),
                Box::new(self.leader.clone()),
                Box::new(self.protection_intact.clone()),
            ],
        };
        both.extend(own);
        both
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use prometheus::proto::MetricType;

    use super::*;

    /// (type, labels) by family name.
    type Families = BTreeMap<String, (String, Vec<String>)>;

    /// The rows of README's metric table that name `process` in its column.
    fn documented(process: Process) -> Families {
        let readme = include_str!("../README.md");
        let section = readme.split("\n## Observability").nth(1).expect("README has an Observability section");
        let section = section.split("\n## ").next().unwrap_or_default();
        let column = match process {
            Process::Webhook => 4,
            Process::Controller => 5,
        };
        section
            .lines()
            .filter(|l| l.starts_with("| `stepup_"))
            .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
            .filter(|cells| cells.get(column).is_some_and(|c| !c.is_empty()))
            .map(|cells| {
                // A scrape lists label names sorted; the table in the order that reads best.
                let mut labels: Vec<String> =
                    cells[3].split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                labels.sort();
                (cells[1].trim_matches('`').to_owned(), (cells[2].to_owned(), labels))
            })
            .collect()
    }

    /// Sets every family once, as if each process's code had run every path, so that the
    /// label sets of vectors exist and the rendering shows what a busy process exports.
    fn exercise_every_family(m: &Metrics) {
        m.reviews.with_label_values(&["denied", "p"]).inc();
        m.authorizations.with_label_values(&["denied", "p"]).inc();
        m.review_duration.with_label_values(&["denied"]).observe(0.001);
        m.review_errors.with_label_values(&["not_json"]).inc();
        m.grant_lookups.with_label_values(&["found"]).inc();
        m.break_glass.inc();
        m.cache_synced.with_label_values(&["grants"]).set(1);
        m.cache_objects.with_label_values(&["grants"]).set(3);
        m.watch_stalls.with_label_values(&["grants"]).inc();
        m.certificate_reloads.with_label_values(&["success"]).inc();
        m.certificate_expiry.set(1);
        m.events.with_label_values(&["published"]).inc();
        m.challenges.with_label_values(&["TOTP", "verified"]).inc();
        m.grants_issued.with_label_values(&["TOTP"]).inc();
        m.grants_active.set(1);
        m.lockouts.inc();
        m.factor_steps.with_label_values(&["unlock", "done"]).inc();
        m.challenge_limit_refusals.with_label_values(&["creation_rate"]).inc();
        m.forged_grants.inc();
        m.audit_records_dropped.inc();
        m.audit_segment_writes.with_label_values(&["success"]).inc();
        m.reconcile_errors.with_label_values(&["challenge", "kube"]).inc();
        m.leader.set(1);
        m.protection_intact.with_label_values(&["CustomResourceDefinition/stepuppolicies.stepup.dev"]).set(1);
    }

    fn type_name(t: MetricType) -> &'static str {
        match t {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            MetricType::UNTYPED => "untyped",
        }
    }

    /// What a scrape of `m` shows: each family's type and label names.
    fn exported(m: &Metrics) -> Families {
        m.registry
            .gather()
            .iter()
            .map(|f| {
                let labels =
                    f.get_metric().first().map(|s| s.get_label().iter().map(|l| l.name().to_owned()).collect());
                (f.name().to_owned(), (type_name(f.get_field_type()).to_owned(), labels.unwrap_or_default()))
            })
            .collect()
    }

    fn check_exports_match_readme(m: &Metrics, process: Process) {
        exercise_every_family(m);
        let registered: BTreeSet<String> =
            m.families(process).iter().flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone())).collect();
        let exported = exported(m);
        let names: BTreeSet<String> = exported.keys().cloned().collect();
        assert_eq!(names, registered, "exercise_every_family must touch each family {process:?} registers");
        assert_eq!(exported, documented(process), "README's metric table, column {process:?}");
    }

    #[test]
    fn the_webhook_exports_exactly_the_families_readme_lists_for_it() {
        check_exports_match_readme(&Metrics::webhook(), Process::Webhook);
    }

    #[test]
    fn the_controller_exports_exactly_the_families_readme_lists_for_it() {
        check_exports_match_readme(&Metrics::controller(), Process::Controller);
    }

    #[test]
    fn the_webhook_exports_no_leader_gauge_and_the_controller_no_certificate_expiry() {
        // Both read as alarms when present and never set: "no leader", "expired in 1970".
        let (webhook, controller) = (Metrics::webhook(), Metrics::controller());
        exercise_every_family(&webhook);
        exercise_every_family(&controller);
        assert!(!webhook.render().contains("stepup_leader"), "{}", webhook.render());
        assert!(!controller.render().contains("stepup_certificate_expiry"), "{}", controller.render());
        assert!(!controller.render().contains("stepup_admission_"), "{}", controller.render());
    }

    #[test]
    fn a_webhook_reports_its_caches_unsynced_before_the_first_list() {
        let text = Metrics::webhook().render();
        for kind in CacheKind::ALL {
            assert!(text.contains(&format!("stepup_cache_synced{{cache=\"{}\"}} 0\n", kind.as_str())), "{text}");
        }
    }

    /// The `stepup_` metrics a PromQL expression reads, with the label names it selects on.
    fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut found = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("stepup_") {
            let starts_word = !rest[..at].chars().next_back().is_some_and(ident);
            let tail = &rest[at..];
            let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
            let (name, after) = tail.split_at(end);
            let mut labels = Vec::new();
            if let Some(inner) = after.strip_prefix('{').and_then(|a| a.split_once('}')).map(|(i, _)| i) {
                labels = inner
                    .split(',')
                    .filter_map(|m| m.split(['=', '!']).next())
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect();
            }
            if starts_word {
                found.push((name.to_owned(), labels));
            }
            rest = after;
        }
        found
    }

    /// Checks that each metric `exprs` read is one a process exports, selected on its own labels.
    fn check_reads_exported_metrics(exprs: &[String], what: &str) {
        let (webhook, controller) = (Metrics::webhook(), Metrics::controller());
        exercise_every_family(&webhook);
        exercise_every_family(&controller);
        let mut families = exported(&webhook);
        families.extend(exported(&controller));
        let mut read = 0;
        for expr in exprs {
            for (name, labels) in selectors(expr) {
                let histogram_part = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s));
                let (kind, known) = match (families.get(&name), histogram_part.and_then(|b| families.get(b))) {
                    (Some(f), _) => f.clone(),
                    (None, Some(f)) if f.0 == "histogram" => f.clone(),
                    _ => panic!("{what} reads {name}, which no process exports: {expr}"),
                };
                for label in &labels {
                    let le = kind == "histogram" && name.ends_with("_bucket") && label == "le";
                    assert!(
                        le || known.contains(label),
                        "{what} selects {name} on {label}, not one of {known:?}: {expr}"
                    );
                }
                read += 1;
            }
        }
        assert!(read > 10, "{what}: only {read} stepup_ metrics found; is the parsing right?");
    }

    #[test]
    fn every_metric_the_alert_rules_read_is_exported_with_those_labels() {
        let rules: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../charts/stepup/files/prometheus-rules.yaml")).expect("rules parse");
        let exprs: Vec<String> = rules["groups"]
            .as_sequence()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
            .map(|r| r["expr"].as_str().expect("every rule has an expr").to_owned())
            .collect();
        check_reads_exported_metrics(&exprs, "prometheus-rules.yaml");
    }

    fn dashboard() -> serde_json::Value {
        serde_json::from_str(include_str!("../charts/stepup/files/grafana-dashboard.json")).expect("dashboard is JSON")
    }

    fn panels(dashboard: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
        dashboard["panels"].as_array().expect("panels").iter().filter(|p| p["type"] != "row")
    }

    #[test]
    fn every_metric_the_dashboard_reads_is_exported_with_those_labels() {
        let dashboard = dashboard();
        let exprs: Vec<String> = panels(&dashboard)
            .flat_map(|p| p["targets"].as_array().expect("targets").iter())
            .map(|t| t["expr"].as_str().expect("every target has an expr").to_owned())
            .collect();
        check_reads_exported_metrics(&exprs, "grafana-dashboard.json");
    }

    #[test]
    fn the_dashboard_queries_the_chosen_data_source_in_panels_that_do_not_overlap() {
        let dashboard = dashboard();
        assert_eq!(dashboard["uid"], "kube-stepup");
        let variables = dashboard["templating"]["list"].as_array().expect("templating");
        assert!(
            variables
                .iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus")
        );
        let uses_variable = |v: &serde_json::Value| v["uid"] == "${datasource}" && v["type"] == "prometheus";
        let mut ids = BTreeSet::new();
        let mut areas: Vec<(u64, u64, u64, u64, String)> = Vec::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            let title = panel["title"].as_str().expect("every panel has a title").to_owned();
            assert!(ids.insert(panel["id"].as_u64().expect("numeric id")), "duplicate id in {title}");
            let g = &panel["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
            assert!(x + w <= 24, "{title} is wider than the grid");
            for (ox, oy, ow, oh, other) in &areas {
                let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
                assert!(apart, "{title} overlaps {other}");
            }
            areas.push((x, y, w, h, title.clone()));
            if panel["type"] == "row" {
                continue;
            }
            assert!(uses_variable(&panel["datasource"]), "{title}: datasource");
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{title} queries nothing");
            assert!(targets.iter().all(|t| uses_variable(&t["datasource"])), "{title}: target datasource");
            assert!(panel["description"].as_str().is_some_and(|d| !d.is_empty()), "{title} says what it shows");
        }
    }
}

/// The three caches, for health tracking and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    Policies,
    Grants,
    Namespaces,
}

impl CacheKind {
    pub const ALL: [CacheKind; 3] = [CacheKind::Policies, CacheKind::Grants, CacheKind::Namespaces];

    pub const fn as_str(self) -> &'static str {
        match self {
            CacheKind::Policies => "policies",
            CacheKind::Grants => "grants",
            CacheKind::Namespaces => "namespaces",
        }
    }
}
