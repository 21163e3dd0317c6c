//! The direct grant lookup: when the cache holds no satisfying grant, ask the API server once
//! (bounded in time) before denying, so a grant issued a moment ago works at once. Lookups
//! are bounded in number too: a storm of denials must not turn into a storm of LISTs against
//! the API server, so beyond a few in flight, or for a user looked up a moment ago, the
//! cache's answer stands.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use kube::{Api, Client, api::ListParams};
use tokio::sync::Semaphore;

use crate::{evidence::RateLimiter, metrics::Metrics};
use stepup_core::{
    api::{self, StepUpGrant},
    grant::GrantRecord,
    keys::GrantVerifier,
};

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("listing grants failed: {0}")]
    Api(#[from] kube::Error),
    /// Skipped to protect the API server; the cache decides.
    #[error("lookup shed: {0}")]
    Shed(&'static str),
}

/// Somewhere to fetch one user's grants from.
pub trait GrantSource: Send + Sync {
    fn grants_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<GrantRecord>, LookupError>>;
}

/// Lists grants by the `stepup.dev/user` label; keeps only those the controller signed.
pub struct ApiGrantSource {
    api: Api<StepUpGrant>,
    verifier: GrantVerifier,
    metrics: Metrics,
}

impl ApiGrantSource {
    pub fn new(client: Client, verifier: GrantVerifier, metrics: Metrics) -> Self {
        Self { api: Api::all(client), verifier, metrics }
    }
}

impl GrantSource for ApiGrantSource {
    fn grants_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<GrantRecord>, LookupError>> {
        Box::pin(async move {
            let selector = format!("{}={}", api::USER_LABEL, api::user_label_value(user));
            // A consistent list: kube-apiserver serves it from its watch cache once that cache
            // has caught up with etcd, so it sees a grant created a moment ago.
            let list = self.api.list(&ListParams::default().labels(&selector)).await?;
            Ok(list
                .items
                .iter()
                .filter_map(|g| super::watch::signed_record(g, &self.verifier, &self.metrics))
                .filter(|g| g.user == user)
                .collect())
        })
    }
}

/// Bounds another source: at most `max_in_flight` lookups at once, and one per user per
/// `per_user` interval.
pub struct Bounded<S> {
    inner: S,
    permits: Arc<Semaphore>,
    recent: RateLimiter<String>,
}

impl<S: GrantSource> Bounded<S> {
    pub fn new(inner: S, max_in_flight: usize, per_user: Duration) -> Self {
        Self { inner, permits: Arc::new(Semaphore::new(max_in_flight.max(1))), recent: RateLimiter::new(per_user) }
    }
}

impl<S: GrantSource> GrantSource for Bounded<S> {
    fn grants_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<GrantRecord>, LookupError>> {
        Box::pin(async move {
            let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
                return Err(LookupError::Shed("too many lookups in flight"));
            };
            if !self.recent.admit(user.to_owned()) {
                return Err(LookupError::Shed("this user was looked up a moment ago"));
            }
            let started = Instant::now();
            let result = self.inner.grants_of(user).await;
            tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "direct grant lookup");
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(std::sync::atomic::AtomicUsize);

    impl GrantSource for Counting {
        fn grants_of<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<GrantRecord>, LookupError>> {
            Box::pin(async move {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(vec![])
            })
        }
    }

    #[tokio::test]
    async fn a_denial_storm_makes_few_lookups() {
        let bounded = Bounded::new(Counting(Default::default()), 2, Duration::from_secs(60));
        let users: Vec<String> = (0..20).map(|i| format!("user-{}", i % 5)).collect();
        let results = futures::future::join_all(users.iter().map(|u| bounded.grants_of(u))).await;
        let done = bounded.inner.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(done, 2, "only as many as may be in flight");
        assert_eq!(results.iter().filter(|r| matches!(r, Err(LookupError::Shed(_)))).count(), 18);
        // The same user again, right away: shed, the cache decides.
        assert!(matches!(bounded.grants_of("user-0").await, Err(LookupError::Shed(_))));
        assert!(bounded.grants_of("someone-new").await.is_ok());
    }
}
