//! Built-in rules for the `stepup.dev` kinds: the identity binding that makes the whole scheme
//! sound. Users can only ask for grants for themselves; only the controller writes grants.

use std::collections::BTreeMap;

use kube_core::ResourceExt;

use super::{Decision, DecisionConfig};
use crate::api::Operation::{self, Connect, Create, Delete, Update};
use crate::{
    api::{self, ChallengePhase, Method, StepUpChallenge, StepUpEnrollment, StepUpGrant, StepUpPolicy},
    policy::{CompiledPolicy, Request},
};

/// The objects of a request on a `stepup.dev` kind, parsed by the shell.
#[derive(Clone, Debug, Default)]
pub enum StepUpObjects {
    /// Not a stepup kind, or nothing to parse.
    #[default]
    None,
    Policy {
        object: Option<Box<StepUpPolicy>>,
    },
    Grant {
        object: Option<Box<StepUpGrant>>,
        old: Option<Box<StepUpGrant>>,
    },
    Challenge {
        object: Option<Box<StepUpChallenge>>,
        old: Option<Box<StepUpChallenge>>,
    },
    Enrollment {
        object: Option<Box<StepUpEnrollment>>,
        old: Option<Box<StepUpEnrollment>>,
    },
    /// A segment of the audit trail; only who writes it matters.
    Log,
}

/// `Some` is final; `None` lets policy evaluation continue (valid StepUpPolicy changes are
/// themselves subject to policies).
pub(super) fn decide(
    req: &Request<'_>,
    op: Operation,
    objects: &StepUpObjects,
    config: &DecisionConfig,
    now: jiff::Timestamp,
) -> Option<Decision> {
    let user = &req.user;
    // The controller's name alone is a mask anyone allowed to impersonate can wear: only its
    // pod-bound credential counts.
    let is_controller = user.pod_bound && config.controller_users.iter().any(|u| u == user.username);
    let is_admin = user.in_any_group(&config.admin_groups);
    match objects {
        StepUpObjects::None => None,
        StepUpObjects::Policy { object } => policy(req, op, object.as_deref(), is_controller),
        StepUpObjects::Grant { object, old } => {
            Some(grant(req, op, object.as_deref(), old.as_deref(), is_controller, is_admin, config))
        }
        StepUpObjects::Challenge { object, old } => {
            Some(challenge(req, object.as_deref(), old.as_deref(), is_controller, is_admin, config, now))
        }
        StepUpObjects::Enrollment { object, old } => {
            Some(enrollment(req, op, object.as_deref(), old.as_deref(), is_controller, is_admin, config))
        }
        StepUpObjects::Log => {
            let is_webhook = user.pod_bound && config.webhook_users.iter().any(|u| u == user.username);
            Some(log(req, op, is_controller || is_webhook))
        }
    }
}

fn policy(req: &Request<'_>, op: Operation, object: Option<&StepUpPolicy>, is_controller: bool) -> Option<Decision> {
    if !req.subresource.is_empty() {
        return Some(if is_controller {
            Decision::builtin_allowed()
        } else {
            Decision::builtin_denied(format!(
                "only the stepup controller writes the {} of a StepUpPolicy",
                req.subresource
            ))
        });
    }
    match (op, object) {
        (Create | Update, Some(p)) => match CompiledPolicy::compile(p) {
            Ok(_) => None,
            Err(e) => Some(Decision::invalid_object(format!("StepUpPolicy \"{}\" is invalid: {e}", p.name_any()))),
        },
        (Create | Update, None) => Some(Decision::invalid("the request carries no StepUpPolicy object")),
        _ => None,
    }
}

fn grant(
    req: &Request<'_>,
    op: Operation,
    object: Option<&StepUpGrant>,
    old: Option<&StepUpGrant>,
    is_controller: bool,
    is_admin: bool,
    config: &DecisionConfig,
) -> Decision {
    let me = req.user.username;
    match op {
        Create | Update if is_controller => match object {
            Some(g) if req.subresource.is_empty() => {
                // Even the controller's identity can be forged by a cluster-admin (impersonated
                // pod extras); its signing key cannot.
                if !config.grant_verifier.as_ref().is_some_and(|v| v.verifies(g)) {
                    return Decision::forged_grant(format!(
                        "StepUpGrant {:?} is not signed by the stepup controller: only grants signed by the stepup controller are accepted, whoever writes them. This attempt is recorded.",
                        g.name_any()
                    ));
                }
                match check_user_label(g.labels(), &g.spec.user, true) {
                    Ok(()) => Decision::builtin_allowed(),
                    Err(e) => Decision::invalid_object(e),
                }
            }
            // Status only: it cannot make a grant usable (the webhook reads the signed spec).
            _ => Decision::builtin_allowed(),
        },
        Create | Update => Decision::builtin_denied(format!(
            "only the stepup controller may create or change StepUpGrants, and {me:?} is not it (not its pod-bound credential); get a grant with `kubectl stepup request`"
        )),
        Delete if is_controller || is_admin => Decision::builtin_allowed(),
        Delete => match old {
            Some(g) if g.spec.user == me => Decision::builtin_allowed(),
            Some(g) => Decision::builtin_denied(format!(
                "grant {} belongs to {:?}; you may only revoke your own grants",
                g.name_any(),
                g.spec.user
            )),
            None => Decision::builtin_denied(
                "cannot tell whose grant this is (no oldObject); only the owner or an admin may revoke it".into(),
            ),
        },
        Connect | api::Operation::All => Decision::builtin_allowed(),
    }
}

/// The audit trail is written and pruned only by stepup's own processes: nobody, admins
/// included, edits or deletes the evidence of what they did.
fn log(req: &Request<'_>, op: Operation, is_recorder: bool) -> Decision {
    if is_recorder {
        // Not itself recorded: a record of each segment write would be written by the next
        // one, and so on forever.
        return Decision::exempt();
    }
    Decision::builtin_denied(format!(
        "StepUpLogs are stepup's audit trail: only its webhook and controller write them, and {:?} may not {}",
        req.user.username,
        match op {
            Delete => "delete them",
            _ => "write them",
        }
    ))
}

fn challenge(
    req: &Request<'_>,
    object: Option<&StepUpChallenge>,
    old: Option<&StepUpChallenge>,
    is_controller: bool,
    is_admin: bool,
    config: &DecisionConfig,
    now: jiff::Timestamp,
) -> Decision {
    if is_controller {
        return Decision::builtin_allowed();
    }
    // Only admission writes reach the stepup kinds' rules (`decide` takes the operation).
    let Some(op) = req.operation() else {
        return Decision::builtin_denied("challenges are only written through admission".into());
    };
    let me = req.user;
    match op {
        Create => {
            let Some(c) = object else {
                return Decision::invalid("the request carries no StepUpChallenge object");
            };
            if c.spec.user != me.username {
                return Decision::builtin_denied(format!(
                    "spec.user is {:?} but you are {:?}: a challenge can only be created for yourself",
                    c.spec.user, me.username
                ));
            }
            if c.spec.uid.as_deref().unwrap_or("") != me.uid {
                return Decision::builtin_denied(format!(
                    "spec.uid is {:?} but your account's UID is {:?}; `kubectl stepup request` fills it in",
                    c.spec.uid.as_deref().unwrap_or(""),
                    me.uid
                ));
            }
            if let Some(what) = c.spec.response.as_deref().and_then(crate::verify::response::unsealed) {
                return Decision::builtin_denied(format!(
                    "spec.response holds {what}, readable by everyone who may watch challenges: it must be sealed to the controller's key; update kubectl-stepup ({})",
                    if what == "a plain code" { "and use the next code" } else { "and sign in again" }
                ));
            }
            if let Some(other) =
                c.metadata.finalizers.iter().flatten().find(|f| f.as_str() != api::WITHDRAWAL_FINALIZER)
            {
                return Decision::invalid_object(format!(
                    "finalizer {other:?} is not allowed on a StepUpChallenge (only {})",
                    api::WITHDRAWAL_FINALIZER
                ));
            }
            if let Err(e) = check_user_label(c.labels(), &c.spec.user, false) {
                return Decision::invalid_object(e);
            }
            // Refused before it is stored: a flood costs the controller nothing.
            if let Some(view) = &config.challenges
                && let Err(refusal) = view.admit(me.username, &c.name_any(), now, !req.dry_run)
            {
                return Decision {
                    limit: Some(refusal.label()),
                    ..Decision::refuse(
                        super::Outcome::BuiltinDenied,
                        429,
                        "TooManyRequests",
                        format!("kube-stepup: {refusal}"),
                    )
                };
            }
            Decision::builtin_allowed()
        }
        Update => match (object, old) {
            (Some(new), Some(old)) if old.spec.method == Method::WebAuthn && old.spec.response.is_none() => {
                webauthn_answer(me.username, new, old, req.subresource)
            }
            _ => Decision::builtin_denied(
                "a StepUpChallenge cannot be changed once created (only the controller updates it); create a new one"
                    .into(),
            ),
        },
        Delete if is_admin => Decision::builtin_allowed(),
        Delete => match old {
            Some(c) if c.spec.user == me.username => Decision::builtin_allowed(),
            _ => Decision::builtin_denied("you may only delete your own challenges".into()),
        },
        Connect | api::Operation::All => Decision::builtin_allowed(),
    }
}

/// The one change a person makes to a challenge after creating it: the sealed answer of their
/// security key to the controller's `webauthnOptions`, once, while it waits for a verdict, and
/// nothing else.
fn webauthn_answer(me: &str, new: &StepUpChallenge, old: &StepUpChallenge, subresource: &str) -> Decision {
    if !subresource.is_empty() {
        return Decision::builtin_denied(format!(
            "only the stepup controller writes the {subresource} of a StepUpChallenge"
        ));
    }
    if old.spec.user != me {
        return Decision::builtin_denied(format!(
            "challenge {} is {:?}'s: only they answer it",
            old.name_any(),
            old.spec.user
        ));
    }
    let pending = old.status.as_ref().and_then(|s| s.phase).is_none_or(|p| p == ChallengePhase::Pending);
    if !pending {
        return Decision::builtin_denied(format!("challenge {} has its verdict: create a new one", old.name_any()));
    }
    let Some(answer) = new.spec.response.as_deref() else {
        return Decision::builtin_denied("a StepUpChallenge changes only by its answer (spec.response)".into());
    };
    if let Some(what) = crate::verify::response::unsealed(answer) {
        return Decision::builtin_denied(format!(
            "spec.response holds {what}, readable by everyone who may watch challenges: it must be sealed to the controller's key; update kubectl-stepup"
        ));
    }
    let mut unchanged = new.clone();
    unchanged.spec.response = None;
    if unchanged.spec != old.spec
        || new.metadata.labels != old.metadata.labels
        || new.metadata.finalizers != old.metadata.finalizers
        || new.metadata.annotations != old.metadata.annotations
    {
        return Decision::builtin_denied(
            "answering a challenge changes only spec.response: what it asks for, its labels and finalizers stay as created"
                .into(),
        );
    }
    Decision::builtin_allowed()
}

fn enrollment(
    req: &Request<'_>,
    op: Operation,
    object: Option<&StepUpEnrollment>,
    old: Option<&StepUpEnrollment>,
    is_controller: bool,
    is_admin: bool,
    config: &DecisionConfig,
) -> Decision {
    if is_controller {
        return controller_enrollment_write(req, op, object, old);
    }
    let me = req.user.username;
    let admins = if config.admin_groups.is_empty() {
        "an admin".to_owned()
    } else {
        format!("an admin (group {})", config.admin_groups.join(" or "))
    };
    let plain_confirmation = |e: &StepUpEnrollment| {
        e.spec.confirmation.as_deref().and_then(crate::verify::response::unsealed).map(|what| {
            Decision::builtin_denied(format!(
                "spec.confirmation holds {what}, readable by everyone who may watch enrollments: it must be sealed to the controller's key; update kubectl-stepup"
            ))
        })
    };
    let bootstrap_refused = || {
        Decision::builtin_denied(format!(
            "only members of the stepup admin groups may enroll through the bootstrap (spec.bootstrap); ask {admins} to approve your enrollment instead"
        ))
    };
    match op {
        Create => {
            let Some(e) = object else {
                return Decision::invalid("the request carries no StepUpEnrollment object");
            };
            if e.spec.user != me {
                return Decision::builtin_denied(format!(
                    "spec.user is {:?} but you are {:?}: you can only enroll yourself",
                    e.spec.user, me
                ));
            }
            let expected = api::enrollment_name_for(me, e.spec.method);
            if e.name_any() != expected {
                return Decision::invalid_object(format!(
                    "a {} StepUpEnrollment for {me:?} must be named {expected:?} (one per user and method); `kubectl stepup enroll` does this",
                    e.spec.method
                ));
            }
            if admin_marks(e.annotations()).iter().any(Option::is_some) {
                return Decision::builtin_denied("an enrollment cannot be created already approved or unlocked".into());
            }
            if e.spec.bootstrap && !is_admin {
                return bootstrap_refused();
            }
            if let Some(refused) = plain_confirmation(e) {
                return refused;
            }
            match check_user_label(e.labels(), &e.spec.user, false) {
                Ok(()) => Decision::builtin_allowed(),
                Err(err) => Decision::invalid_object(err),
            }
        }
        Update if !req.subresource.is_empty() => Decision::builtin_denied(format!(
            "only the stepup controller writes the {} of a StepUpEnrollment",
            req.subresource
        )),
        Update => {
            let (Some(new), Some(old)) = (object, old) else {
                return Decision::invalid("the request carries no StepUpEnrollment object and oldObject");
            };
            let marks_changed = admin_marks(new.annotations()) != admin_marks(old.annotations());
            if old.spec.user == me && new.spec.user == me {
                if marks_changed {
                    return Decision::builtin_denied(format!(
                        "you cannot approve, unlock or remove keys from your own enrollment in an admin's name; ask {admins}"
                    ));
                }
                if new.spec.bootstrap && !old.spec.bootstrap && !is_admin {
                    return bootstrap_refused();
                }
                if let Some(refused) = plain_confirmation(new) {
                    return refused;
                }
                return match check_user_label(new.labels(), &new.spec.user, false) {
                    Ok(()) => Decision::builtin_allowed(),
                    Err(err) => Decision::invalid_object(err),
                };
            }
            if !is_admin {
                return Decision::builtin_denied(format!(
                    "enrollment {} belongs to {:?}; you may only change your own",
                    old.name_any(),
                    old.spec.user
                ));
            }
            if new.spec != old.spec {
                return Decision::builtin_denied(
                    "admins may approve or unlock another user's enrollment, not change its spec".into(),
                );
            }
            check_admin_marks(new, old, me)
        }
        Delete if is_admin => Decision::builtin_allowed(),
        Delete => Decision::builtin_denied(format!(
            "an enrollment can only be removed by {admins}: deleting it would let anyone holding your credentials enroll their own authenticator"
        )),
        Connect | api::Operation::All => Decision::builtin_allowed(),
    }
}

/// What the controller writes to an enrollment: its status, and the removal of what it
/// consumed (a confirmation, admin marks). Nothing else, even with its pod-bound credential:
/// pod extras can be forged by whoever may impersonate.
fn controller_enrollment_write(
    req: &Request<'_>,
    op: Operation,
    object: Option<&StepUpEnrollment>,
    old: Option<&StepUpEnrollment>,
) -> Decision {
    if !req.subresource.is_empty() {
        return Decision::builtin_allowed();
    }
    let (Update, Some(new), Some(old)) = (op, object, old) else {
        return Decision::builtin_denied(
            "the stepup controller only updates enrollments (their status, and what it consumed)".into(),
        );
    };
    let spec_kept = new.spec.user == old.spec.user
        && new.spec.method == old.spec.method
        && new.spec.public_key == old.spec.public_key
        && new.spec.bootstrap == old.spec.bootstrap
        && (new.spec.confirmation == old.spec.confirmation || new.spec.confirmation.is_none());
    let marks_only_removed = api::ADMIN_ANNOTATIONS
        .iter()
        .all(|k| new.annotations().get(*k).is_none_or(|v| old.annotations().get(*k) == Some(v)));
    if spec_kept && marks_only_removed {
        Decision::builtin_allowed()
    } else {
        Decision::builtin_denied(
            "the stepup controller only clears a consumed confirmation or admin marks of an enrollment; this changes more"
                .into(),
        )
    }
}

/// Whether the request is an admin's act on another user's enrollment (an approval, a reset,
/// an unlock), which the built-in admin-acts policy then subjects to step-up.
pub(super) fn is_admin_act(req: &Request<'_>, op: Operation, objects: &StepUpObjects, config: &DecisionConfig) -> bool {
    let StepUpObjects::Enrollment { object: Some(new), old: Some(old) } = objects else { return false };
    op == Update
        && req.subresource.is_empty()
        && old.spec.user != req.user.username
        && req.user.in_any_group(&config.admin_groups)
        // Only the controller's pod-bound credential is the controller; its name alone is a mask.
        && !(req.user.pod_bound && config.controller_users.iter().any(|u| u == req.user.username))
        && admin_marks(new.annotations()) != admin_marks(old.annotations())
        && api::ADMIN_ANNOTATIONS.iter().any(|k| new.annotations().contains_key(*k))
}

/// The admin-only annotations, in the order of [`api::ADMIN_ANNOTATIONS`].
fn admin_marks(annotations: &BTreeMap<String, String>) -> [Option<&str>; 6] {
    api::ADMIN_ANNOTATIONS.map(|k| annotations.get(k).map(String::as_str))
}

/// An admin's marks on another user's enrollment: in their own name, and an approval only of
/// the key the enrollment carries right now (the fingerprint the admin was shown).
fn check_admin_marks(new: &StepUpEnrollment, old: &StepUpEnrollment, me: &str) -> Decision {
    let get = |e: &StepUpEnrollment, k: &str| e.annotations().get(k).cloned();
    let changed = |k: &str| get(new, k) != get(old, k);
    if changed(api::LEGACY_RESET_BY_ANNOTATION) && get(new, api::LEGACY_RESET_BY_ANNOTATION).is_some() {
        return Decision::builtin_denied(format!(
            "{} is no longer used: `kubectl stepup unlock` clears a lockout, `kubectl stepup reset --key` allows one re-enrollment; update kubectl-stepup",
            api::LEGACY_RESET_BY_ANNOTATION
        ));
    }
    for key in [api::APPROVED_BY_ANNOTATION, api::UNLOCK_BY_ANNOTATION, api::REMOVED_BY_ANNOTATION] {
        if changed(key) && get(new, key).is_some_and(|v| v != me) {
            return Decision::builtin_denied(format!("{key} must be your own username ({me:?})"));
        }
    }
    if changed(api::REMOVED_BY_ANNOTATION)
        && get(new, api::REMOVED_BY_ANNOTATION).is_some()
        && (new.spec.method != api::Method::WebAuthn || get(new, api::REMOVE_KEY_ANNOTATION).is_none())
    {
        return Decision::builtin_denied(format!(
            "{} goes with {} (the key's id) on a security-key enrollment; `kubectl stepup remove-key KEY --user USER` sets both",
            api::REMOVED_BY_ANNOTATION,
            api::REMOVE_KEY_ANNOTATION
        ));
    }
    let approving = [api::APPROVED_BY_ANNOTATION, api::APPROVED_KEY_ANNOTATION, api::APPROVED_AT_ANNOTATION]
        .iter()
        .any(|k| changed(k) && get(new, k).is_some());
    if approving {
        let current = crate::verify::seal::fingerprint(&new.spec.public_key);
        let approved =
            get(new, api::APPROVED_KEY_ANNOTATION).and_then(|k| crate::verify::seal::normalize_fingerprint(&k));
        if get(new, api::APPROVED_BY_ANNOTATION).is_none() || get(new, api::APPROVED_AT_ANNOTATION).is_none() {
            return Decision::builtin_denied(format!(
                "an approval names the admin ({}), the key ({}) and the time ({}); `kubectl stepup approve` sets all three",
                api::APPROVED_BY_ANNOTATION,
                api::APPROVED_KEY_ANNOTATION,
                api::APPROVED_AT_ANNOTATION
            ));
        }
        if approved.as_deref() != Some(current.as_str()) {
            return Decision::builtin_denied(format!(
                "the enrollment of {:?} carries key {current}, not the approved {}: the key changed, or the fingerprint is wrong; look again (`kubectl stepup approve {}`)",
                new.spec.user,
                get(new, api::APPROVED_KEY_ANNOTATION).unwrap_or_default(),
                new.spec.user
            ));
        }
    }
    Decision::builtin_allowed()
}

/// The `stepup.dev/user` label, when present (or when required), must be the hash of spec.user:
/// lookups by label would otherwise miss the object.
fn check_user_label(labels: &BTreeMap<String, String>, user: &str, required: bool) -> Result<(), String> {
    let expected = api::user_label_value(user);
    match labels.get(api::USER_LABEL) {
        Some(v) if *v == expected => Ok(()),
        Some(v) => Err(format!("label {}={v} does not match spec.user (expected {expected})", api::USER_LABEL)),
        None if required => Err(format!("label {}={expected} is required", api::USER_LABEL)),
        None => Ok(()),
    }
}
