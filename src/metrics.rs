//! Prometheus metrics, `stepup_` prefix, base units, and labels of bounded cardinality (never
//! a username).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Review latency buckets from 100 µs: the decision itself takes nanoseconds, a direct grant
/// lookup milliseconds; the API server's own admission buckets start at 5 ms.
pub const REVIEW_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reviews by decision (`granted`, `denied`, ...) and policy (`none` when no policy).
    pub reviews: IntCounterVec,
    pub review_duration: HistogramVec,
    /// Requests that could not be answered normally, by reason.
    pub review_errors: IntCounterVec,
    /// Direct grant lookups against the API server, by result.
    pub grant_lookups: IntCounterVec,
    pub break_glass: IntCounter,
    /// 1 when a cache's watch has synced and is healthy.
    pub cache_synced: IntGaugeVec,
    pub cache_objects: IntGaugeVec,
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
    /// Reconcile failures by controller and error kind.
    pub reconcile_errors: IntCounterVec,
    /// 1 while this replica holds the controller Lease.
    pub leader: IntGauge,
    /// 1 while an object stepup's protection rests on exists (CRDs, webhook configuration,
    /// admission policies and bindings), by `Kind/name`.
    pub protection_intact: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reviews = IntCounterVec::new(
            Opts::new("stepup_admission_reviews_total", "Admission reviews answered, by decision and policy."),
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

        for c in [
            Box::new(reviews.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(review_duration.clone()),
            Box::new(review_errors.clone()),
            Box::new(grant_lookups.clone()),
            Box::new(break_glass.clone()),
            Box::new(cache_synced.clone()),
            Box::new(cache_objects.clone()),
            Box::new(certificate_reloads.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(events.clone()),
            Box::new(challenges.clone()),
            Box::new(grants_issued.clone()),
            Box::new(grants_active.clone()),
            Box::new(lockouts.clone()),
            Box::new(forged_grants.clone()),
            Box::new(reconcile_errors.clone()),
            Box::new(leader.clone()),
            Box::new(protection_intact.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            reviews,
            review_duration,
            review_errors,
            grant_lookups,
            break_glass,
            cache_synced,
            cache_objects,
            certificate_reloads,
            certificate_expiry,
            events,
            challenges,
            grants_issued,
            grants_active,
            lockouts,
            forged_grants,
            reconcile_errors,
            leader,
            protection_intact,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
