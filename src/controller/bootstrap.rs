//! The bootstrap record's shell: read (or, the first time, written) when a replica starts
//! leading; claimed and completed by the enrollment executor, with optimistic concurrency on
//! the Secret so two replicas cannot both hand it out. While the window is open, its token is
//! published in Secret `stepup-bootstrap-token` for installers (who alone can read Secrets in
//! stepup's namespace); emptied once the bootstrap is used. I/O.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, PostParams},
};
use stepup_core::keys::{BOOTSTRAP_TOKEN_KEY, BOOTSTRAP_TOKEN_SECRET};

use super::{
    Context, Error, Result, USERNAME_ANNOTATION,
    factor::{Factor, FactorRead},
    lock,
    steps::{
        Record,
        bootstrap::{Bootstrap, BootstrapRecord, DATA_KEY, SECRET_NAME},
        enrollment::BootstrapUse,
    },
};

fn secrets(ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &ctx.settings.namespace)
}

/// A Secret of stepup's namespace that the controller manages.
fn managed_secret(ctx: &Context, name: &str, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ctx.settings.namespace.clone()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_owned(), "stepup".to_owned())])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

fn record_of(secret: &Secret, ctx: &Context) -> std::result::Result<BootstrapRecord, String> {
    let blob = secret.data.as_ref().and_then(|d| d.get(DATA_KEY)).ok_or("it holds no record")?;
    BootstrapRecord::open(&blob.0, &ctx.keys.factors)
}

/// How many users have a confirmed factor (a corrupt one counts: someone was enrolled).
async fn enrolled(ctx: &Context) -> Result<usize> {
    let list = secrets(ctx).list(&ListParams::default().labels("app.kubernetes.io/managed-by=stepup")).await?;
    Ok(list
        .items
        .iter()
        .filter_map(|s| {
            let user = s.metadata.annotations.as_ref()?.get(USERNAME_ANNOTATION)?;
            match Factor::from_secret(s, &ctx.keys.factors, user) {
                FactorRead::Found(f) => f.is_enrolled().then_some(()),
                FactorRead::Corrupt(_) => Some(()),
                FactorRead::Missing => None,
            }
        })
        .count())
}

/// Reads the record, writing the first one if there is none. A record this controller cannot
/// open keeps the bootstrap closed, loudly.
pub async fn load(ctx: &Context) -> Result<()> {
    read_record(ctx).await?;
    publish_token(ctx).await
}

/// Keeps Secret `stepup-bootstrap-token` in step with the record: the token while the window
/// is open and unused, empty after. Without it, nobody can prove an installer made the
/// enrollment that asks for the bootstrap.
async fn publish_token(ctx: &Context) -> Result<()> {
    let token = match view(ctx) {
        // Claimed but not confirmed, it stays: the claimant's plugin may need it again.
        Bootstrap::Open { token, until, .. } if Timestamp::now() < until => token,
        _ => String::new(),
    };
    let api = secrets(ctx);
    let data = BTreeMap::from([(BOOTSTRAP_TOKEN_KEY.to_owned(), ByteString(token.clone().into_bytes()))]);
    match api.get_opt(BOOTSTRAP_TOKEN_SECRET).await? {
        Some(current)
            if current.data.as_ref().and_then(|d| d.get(BOOTSTRAP_TOKEN_KEY)).map(|t| &t.0[..])
                == Some(token.as_bytes()) => {}
        Some(mut current) => {
            current.data = Some(data);
            api.replace(BOOTSTRAP_TOKEN_SECRET, &PostParams::default(), &current).await?;
        }
        None if token.is_empty() => {}
        None => {
            match api.create(&PostParams::default(), &managed_secret(ctx, BOOTSTRAP_TOKEN_SECRET, data)).await {
                Ok(_) => {}
                // Another replica published it first.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

async fn read_record(ctx: &Context) -> Result<()> {
    let api = secrets(ctx);
    let existing = match api.get_opt(SECRET_NAME).await? {
        Some(s) => s,
        None => {
            let now = Timestamp::now();
            let (record, evidence) = BootstrapRecord::first(now, ctx.settings.bootstrap_window, enrolled(ctx).await?);
            let secret = managed_secret(
                ctx,
                SECRET_NAME,
                BTreeMap::from([(DATA_KEY.to_owned(), ByteString(record.seal(&ctx.keys.factors)))]),
            );
            match api.create(&PostParams::default(), &secret).await {
                Ok(created) => {
                    ctx.record(&created, "", "", &evidence).await;
                    *lock(&ctx.bootstrap) = Some((created, record));
                    return Ok(());
                }
                // Another replica wrote it first: read theirs.
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(SECRET_NAME).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    match record_of(&existing, ctx) {
        Ok(record) if rolled_back(lock(&ctx.bootstrap).as_ref().map(|(_, r)| r), &record) => {
            // A record never goes back to unused: someone restored an older copy to reopen it.
            let evidence = Record::warning(
                "BootstrapCorrupt",
                "bootstrap.corrupt",
                "rolled_back",
                format!(
                    "the bootstrap record {SECRET_NAME} was rolled back to an unused copy: the bootstrap stays closed"
                ),
            );
            ctx.record(&existing, "", "", &evidence).await;
            *lock(&ctx.bootstrap) = None;
        }
        Ok(record) => *lock(&ctx.bootstrap) = Some((existing, record)),
        Err(why) => {
            let evidence = Record::warning(
                "BootstrapCorrupt",
                "bootstrap.corrupt",
                "corrupt",
                format!(
                    "the bootstrap record {SECRET_NAME} failed its integrity check ({why}): the bootstrap stays closed"
                ),
            );
            ctx.record(&existing, "", "", &evidence).await;
            *lock(&ctx.bootstrap) = None;
        }
    }
    Ok(())
}

/// Whether `read` forgets a claim or a completion that `known` had.
fn rolled_back(known: Option<&BootstrapRecord>, read: &BootstrapRecord) -> bool {
    known.is_some_and(|k| {
        (k.completed_by.is_some() && read.completed_by.is_none())
            || (k.claimed_by.is_some() && read.claimed_by.is_none())
            || k.opened_at != read.opened_at
    })
}

/// Whether the bootstrap can be used, as last read.
pub fn view(ctx: &Context) -> Bootstrap {
    match lock(&ctx.bootstrap).as_ref() {
        Some((_, record)) => record.view(&ctx.keys.bootstrap),
        None => Bootstrap::Closed { why: "the bootstrap record is missing or corrupt".into() },
    }
}

/// Records a claim or the completion, before the factor write that depends on it.
pub async fn apply(ctx: &Context, change: &BootstrapUse, user: &str) -> Result<()> {
    let Some((secret, record)) = lock(&ctx.bootstrap).clone() else {
        return Err(Error::Bootstrap("the bootstrap record is gone; will read it again".into()));
    };
    let next = match change {
        BootstrapUse::Claim { fingerprint } => record.claimed(user, fingerprint),
        BootstrapUse::Complete => record.completed(user, Timestamp::now()),
    };
    let mut updated = secret.clone();
    updated.data = Some(BTreeMap::from([(DATA_KEY.to_owned(), ByteString(next.seal(&ctx.keys.factors)))]));
    match secrets(ctx).replace(SECRET_NAME, &PostParams::default(), &updated).await {
        Ok(written) => {
            *lock(&ctx.bootstrap) = Some((written, next));
            if matches!(change, BootstrapUse::Complete) {
                publish_token(ctx).await?;
            }
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
            // Someone else changed it (another replica, or an admin): read it again first.
            load(ctx).await?;
            Err(Error::Conflict(format!("bootstrap record {SECRET_NAME}")))
        }
        Err(e) => Err(e.into()),
    }
}
