//! The direct grant lookup: when the cache holds no satisfying grant, ask the API server once
//! (bounded in time) before denying, so a grant issued a moment ago works at once.

use futures::future::BoxFuture;
use kube::{Api, Client, api::ListParams};

use crate::{
    api::{self, StepUpGrant},
    grant::GrantRecord,
};

/// Somewhere to fetch one user's grants from.
pub trait GrantSource: Send + Sync {
    fn grants_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<GrantRecord>, kube::Error>>;
}

/// Lists grants by the `stepup.dev/user` label.
pub struct ApiGrantSource {
    api: Api<StepUpGrant>,
}

impl ApiGrantSource {
    pub fn new(client: Client) -> Self {
        Self { api: Api::all(client) }
    }
}

impl GrantSource for ApiGrantSource {
    fn grants_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<GrantRecord>, kube::Error>> {
        Box::pin(async move {
            let selector = format!("{}={}", api::USER_LABEL, api::user_label_value(user));
            let list = self.api.list(&ListParams::default().labels(&selector)).await?;
            Ok(list.items.iter().filter_map(GrantRecord::from_grant).filter(|g| g.user == user).collect())
        })
    }
}
