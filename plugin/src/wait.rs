//! Waiting for the controller: re-read one object until a check says done, or time runs out.

use std::{fmt::Debug, time::Duration};

use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use super::{
    cluster::Session,
    error::{Error, Result},
};

/// How often to look again. The controller acts within milliseconds; a quarter second keeps
/// the wait short without hammering the API server.
const POLL: Duration = Duration::from_millis(250);

/// What a check makes of the object's current state.
pub enum Step<T> {
    Done(T),
    Wait,
}

/// Reads `name` until `check` returns `Done` or an error, or `timeout` passes; then `on_timeout`
/// gets the last state seen.
pub async fn until<K, T>(
    session: &Session,
    api: &Api<K>,
    name: &str,
    timeout: stepup_core::api::Duration,
    mut check: impl FnMut(&K) -> Result<Step<T>>,
    on_timeout: impl FnOnce(Option<&K>) -> Error,
) -> Result<T>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let deadline = tokio::time::Instant::now() + timeout.as_std();
    let mut last = None;
    loop {
        if let Some(object) = api.get_opt(name).await.map_err(session.kube_error("read the progress"))? {
            if let Step::Done(value) = check(&object)? {
                return Ok(value);
            }
            last = Some(object);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(on_timeout(last.as_ref()));
        }
        tokio::time::sleep(POLL).await;
    }
}
