//! The webhook's view of everyone's challenges, for the per-user limits: a list-then-watch
//! loop that feeds [`ChallengeView`]. While the watch is broken the view refuses nothing (the
//! controller's own check still stands), and says so in the log. I/O.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{Api, Client, runtime::watcher};
use tokio_util::sync::CancellationToken;

use stepup_core::{api::StepUpChallenge, limits::ChallengeView};

pub fn spawn(client: Client, view: Arc<ChallengeView>, stop: CancellationToken) {
    tokio::spawn(async move {
        let api = Api::<StepUpChallenge>::all(client);
        let mut backoff = Duration::from_millis(500);
        loop {
            let completed = run_once(&api, &view, &stop).await;
            view.mark_broken();
            if stop.is_cancelled() {
                return;
            }
            tracing::warn!(
                "challenge watch ended; per-user challenge limits are enforced by the controller alone until it resyncs"
            );
            backoff = if completed { Duration::from_millis(500) } else { (backoff * 2).min(Duration::from_secs(30)) };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    });
}

async fn run_once(api: &Api<StepUpChallenge>, view: &ChallengeView, stop: &CancellationToken) -> bool {
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut listed: Vec<StepUpChallenge> = Vec::new();
    let mut completed = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return completed,
            event = stream.next() => event,
        };
        match event {
            None => return completed,
            Some(Ok(watcher::Event::Init)) => listed.clear(),
            Some(Ok(watcher::Event::InitApply(c))) => listed.push(c),
            Some(Ok(watcher::Event::InitDone)) => {
                view.replace(&listed);
                tracing::info!(challenges = listed.len(), "challenge view synced");
                listed = Vec::new();
                completed = true;
            }
            Some(Ok(watcher::Event::Apply(c))) => view.apply(&c, jiff::Timestamp::now()),
            Some(Ok(watcher::Event::Delete(c))) => view.delete(&c),
            Some(Err(error)) => {
                tracing::warn!(%error, "challenge watch failed; relisting");
                return completed;
            }
        }
    }
}
