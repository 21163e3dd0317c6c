//! Retention of the durable audit trail: StepUpLog segments older than the retention period
//! are deleted, hourly, by the leader. Does I/O.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::records::segment;
use stepup_core::api::StepUpLog;

/// Segments whose first record's day is before `cutoff_day` (both `YYYYMMDD`) are expired.
/// A segment covers at most an hour past its first record, so a day of slack keeps every
/// record for at least the retention period.
pub fn expired(day_label: &str, cutoff_day: &str) -> bool {
    day_label.len() == 8 && day_label < cutoff_day
}

pub async fn run(ctx: Arc<Context>, work: CancellationToken) {
    let api: Api<StepUpLog> = Api::all(ctx.client.clone());
    loop {
        let cutoff = Timestamp::now() - ctx.settings.audit_retention - jiff::SignedDuration::from_hours(24);
        let cutoff_day = segment::day(cutoff);
        match api.list_metadata(&ListParams::default()).await {
            Ok(list) => {
                let mut deleted = 0;
                for meta in list.items {
                    let day = meta.metadata.labels.as_ref().and_then(|l| l.get(segment::DAY_LABEL)).cloned();
                    let (Some(name), Some(day)) = (meta.metadata.name, day) else { continue };
                    if expired(&day, &cutoff_day) && api.delete(&name, &DeleteParams::default()).await.is_ok() {
                        deleted += 1;
                    }
                }
                if deleted > 0 {
                    tracing::info!(deleted, before = %cutoff_day, "audit segments past their retention deleted");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list audit segments for retention"),
        }
        tokio::select! {
            _ = work.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_older_than_the_cutoff_day_expire() {
        assert!(expired("20260101", "20260102"));
        assert!(!expired("20260102", "20260102"));
        assert!(!expired("garbage", "20260102"));
    }
}
