//! Built-in rules for the `stepup.dev` kinds: the identity binding that makes the whole scheme
//! sound. Users can only ask for grants for themselves; only the controller writes grants.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::{Decision, DecisionConfig};
use crate::api::Operation::{Connect, Create, Delete, Update};
use crate::{
    api::{self, StepUpChallenge, StepUpEnrollment, StepUpGrant, StepUpPolicy},
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
}

/// `Some` is final; `None` lets policy evaluation continue (valid StepUpPolicy changes are
/// themselves subject to policies).
pub(super) fn decide(req: &Request<'_>, objects: &StepUpObjects, config: &DecisionConfig) -> Option<Decision> {
    let user = &req.user;
    // The controller's name alone is a mask anyone allowed to impersonate can wear: only its
    // pod-bound credential counts.
    let is_controller = user.pod_bound && config.controller_users.iter().any(|u| u == user.username);
    let is_admin = user.in_any_group(&config.admin_groups);
    match objects {
        StepUpObjects::None => None,
        StepUpObjects::Policy { object } => policy(req, object.as_deref(), is_controller),
        StepUpObjects::Grant { object, old } => {
            Some(grant(req, object.as_deref(), old.as_deref(), is_controller, is_admin, config))
        }
        StepUpObjects::Challenge { object, old } => {
            Some(challenge(req, object.as_deref(), old.as_deref(), is_controller, is_admin))
        }
        StepUpObjects::Enrollment { object, old } => {
            Some(enrollment(req, object.as_deref(), old.as_deref(), is_controller, is_admin, config))
        }
    }
}

fn policy(req: &Request<'_>, object: Option<&StepUpPolicy>, is_controller: bool) -> Option<Decision> {
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
    match (req.operation, object) {
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
    object: Option<&StepUpGrant>,
    old: Option<&StepUpGrant>,
    is_controller: bool,
    is_admin: bool,
    config: &DecisionConfig,
) -> Decision {
    let me = req.user.username;
    match req.operation {
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

fn challenge(
    req: &Request<'_>,
    object: Option<&StepUpChallenge>,
    old: Option<&StepUpChallenge>,
    is_controller: bool,
    is_admin: bool,
) -> Decision {
    if is_controller {
        return Decision::builtin_allowed();
    }
    let me = req.user;
    match req.operation {
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
            match check_user_label(c.labels(), &c.spec.user, false) {
                Ok(()) => Decision::builtin_allowed(),
                Err(e) => Decision::invalid_object(e),
            }
        }
        Update => Decision::builtin_denied(
            "a StepUpChallenge cannot be changed once created (only the controller updates it); create a new one"
                .into(),
        ),
        Delete if is_admin => Decision::builtin_allowed(),
        Delete => match old {
            Some(c) if c.spec.user == me.username => Decision::builtin_allowed(),
            _ => Decision::builtin_denied("you may only delete your own challenges".into()),
        },
        Connect | api::Operation::All => Decision::builtin_allowed(),
    }
}

fn enrollment(
    req: &Request<'_>,
    object: Option<&StepUpEnrollment>,
    old: Option<&StepUpEnrollment>,
    is_controller: bool,
    is_admin: bool,
    config: &DecisionConfig,
) -> Decision {
    if is_controller {
        return Decision::builtin_allowed();
    }
    let me = req.user.username;
    let admins = if config.admin_groups.is_empty() {
        "an admin".to_owned()
    } else {
        format!("an admin (group {})", config.admin_groups.join(" or "))
    };
    match req.operation {
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
            let expected = api::enrollment_name(me);
            if e.name_any() != expected {
                return Decision::invalid_object(format!(
                    "a StepUpEnrollment for {me:?} must be named {expected:?} (one per user); `kubectl stepup enroll` does this"
                ));
            }
            if approval_marks(e.annotations()).iter().any(Option::is_some) {
                return Decision::builtin_denied("an enrollment cannot be created already approved or reset".into());
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
            let marks_changed = approval_marks(new.annotations()) != approval_marks(old.annotations());
            if old.spec.user == me && new.spec.user == me {
                if marks_changed {
                    return Decision::builtin_denied(format!(
                        "you cannot approve or reset your own enrollment; ask {admins}"
                    ));
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
                    "admins may approve or reset another user's enrollment, not change its spec".into(),
                );
            }
            let [new_approved, new_reset] = approval_marks(new.annotations());
            let [old_approved, old_reset] = approval_marks(old.annotations());
            for (key, new, old) in [
                (api::APPROVED_BY_ANNOTATION, new_approved, old_approved),
                (api::RESET_BY_ANNOTATION, new_reset, old_reset),
            ] {
                if new != old && new.is_some_and(|v| v != me) {
                    return Decision::builtin_denied(format!("{key} must be your own username ({me:?})"));
                }
            }
            Decision::builtin_allowed()
        }
        Delete if is_admin => Decision::builtin_allowed(),
        Delete => Decision::builtin_denied(format!(
            "an enrollment can only be removed by {admins}: deleting it would let anyone holding your credentials enroll their own authenticator"
        )),
        Connect | api::Operation::All => Decision::builtin_allowed(),
    }
}

/// The admin-only annotations: approval and reset.
fn approval_marks(annotations: &BTreeMap<String, String>) -> [Option<&str>; 2] {
    [
        annotations.get(api::APPROVED_BY_ANNOTATION).map(String::as_str),
        annotations.get(api::RESET_BY_ANNOTATION).map(String::as_str),
    ]
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
