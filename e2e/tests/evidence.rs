//! Issue-13 scenarios on Events: they say who was refused what, repeats fold, and a denial
//! storm from many users stays within the webhook's Event rate.

use std::time::{Duration, Instant};

use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use stepup_core::api::Operation::Delete;
use stepup_core::testing::policy;
use stepup_e2e::{World, eventually, refusal};

async fn stepup_required_events(world: &World) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(world.admin.clone(), "stepup-system");
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("StepUpRequired"))
        .collect()
}

#[tokio::test]
async fn denial_events_say_who_was_refused_and_fold_only_repeats() {
    let world = World::new().await;
    let probe = format!("probe-{}", std::process::id());
    world
        .apply_policies(&[policy("evidence-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build()])
        .await;
    world.secret("prod", &probe).await;
    for who in ["alice", "bob", "alice", "alice"] {
        let api: Api<Secret> = Api::namespaced(world.env.client(who).await, "prod");
        refusal(api.delete(&probe, &DeleteParams::default()).await);
        // Past the e2e webhook's 1 s interval, so repeats are written, not only counted.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let mine = |events: &[Event], user: &str| -> Vec<Event> {
        events
            .iter()
            .filter(|e| e.note.as_deref().is_some_and(|n| n.starts_with(&format!("{user}: ")) && n.contains(&probe)))
            .cloned()
            .collect()
    };
    let (alice, bob) = eventually(Duration::from_secs(20), || async {
        let events = stepup_required_events(&world).await;
        let (a, b) = (mine(&events, "alice"), mine(&events, "bob"));
        let folded = a.first().and_then(|e| e.series.as_ref()).map(|s| s.count).unwrap_or(1);
        if a.len() == 1 && b.len() == 1 && folded >= 3 { Ok((a, b)) } else { anyhow::bail!("alice {a:?}, bob {b:?}") }
    })
    .await
    .expect("one Event per user, alice's three refusals folded into hers");
    assert_eq!(alice[0].series.as_ref().unwrap().count, 3);
    assert!(bob[0].series.is_none(), "bob was refused once");
    assert!(bob[0].note.as_deref().unwrap().contains(&format!("delete secrets \"{probe}\" in namespace \"prod\"")));
}

#[tokio::test]
async fn a_denial_storm_from_many_users_stays_within_the_event_rate() {
    let world = World::new().await;
    let probe = format!("storm-{}", std::process::id());
    world
        .apply_policies(&[policy("storm-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build()])
        .await;
    world.secret("prod", &probe).await;
    let before = stepup_required_events(&world).await.len();
    let rss_before = webhook_rss_mib(&world);
    // 60 distinct people (the admin impersonating them), each refused once, as fast as they come.
    let started = Instant::now();
    let users: Vec<String> = (0..60).map(|i| format!("storm-user-{i}")).collect();
    let probe = probe.as_str();
    let results = futures::future::join_all(users.iter().map(|u| {
        let env = &world.env;
        async move {
            tokio::process::Command::new(env.var("KUBECTL"))
                .arg("--kubeconfig")
                .arg(env.kubeconfig("admin"))
                .args(["--as", u, "--as-group", "developers", "-n", "prod", "delete", "secret", probe])
                .output()
                .await
                .unwrap()
        }
    }))
    .await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(|o| !o.status.success()), "every one of them was refused");
    // The bound is on what gets written at all: Events the webhook still holds back would be
    // written within its 1 s pacing, so wait past it before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = stepup_required_events(&world).await.len() - before;
    // The webhook writes at most 5 Events per second after a burst of 20.
    let bound = 20 + (5.0 * (elapsed.as_secs_f64() + 2.0)).ceil() as usize;
    eprintln!(
        "60 users refused in {elapsed:?}: {written} Events written (bound {bound}); webhook RSS {:.1} → {:.1} MiB",
        rss_before,
        webhook_rss_mib(&world)
    );
    assert!(written <= bound, "{written} Events for 60 refusals in {elapsed:?}");
    assert!(written >= 20, "the storm is still evidenced: {written}");
    let held = world.env.metric_sum("stepup_events_total{result=\"rate_limited\"}").await;
    assert!(held > 0.0 || written == 60, "what the rate held back is counted");
}

/// The script-started webhook's resident memory, in MiB; printed, never asserted.
fn webhook_rss_mib(world: &World) -> f64 {
    world.env.webhook_pid().and_then(stepup_e2e::rss_mib).unwrap_or(0.0)
}
