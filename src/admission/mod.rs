//! The admission webhook: AdmissionReview in, decision out, over TLS.

pub mod access_review;
pub mod cache;
pub mod challenges;
pub mod events;
pub mod lookup;
pub mod review;
pub mod run;
pub mod server;
pub mod tls;
pub mod watch;

pub use cache::{CacheKind, Caches};
pub use server::{
    AppState, BodyBudget, ConnectionLimits, Peer, Readiness, Settings, Webhook, admin_router, router, serve_tls,
};
