//! Reading kube-stepup refusals: the `[stepup-required: ...]` trailer at the end of a denial
//! message (what kubectl prints on stderr) and the `StepUpRequired` cause of the Status. Both
//! carry [`Requirement`]'s text form; this is the one place the plugin reads it.

use kube::core::Status;

use stepup_core::decision::Requirement;

const OPEN: &str = "[stepup-required: ";

/// The `details.causes[].reason` of a step-up denial.
pub const CAUSE_REASON: &str = "StepUpRequired";

/// Every well-formed trailer in `text`, in order. kubectl prints one refusal per object, so a
/// command on several objects can carry several.
pub fn requirements_in(text: &str) -> Vec<Requirement> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(']') else { break };
        if let Ok(requirement) = after[..end].parse() {
            found.push(requirement);
        }
        rest = &after[end..];
    }
    found
}

/// What a refusal printed by kubectl asks for, all trailers merged; `None` when `stderr` holds
/// no kube-stepup refusal (then the command failed for another reason).
pub fn refusal_in(stderr: &str) -> Option<Requirement> {
    merge(requirements_in(stderr))
}

/// What the API server's refusal of a wrapped kubectl command asks for: trailers only on the
/// lines kubectl prints for a denial by stepup's enforcing webhook or by its authorizer (a
/// read: `... is forbidden: User "alice" cannot get resource ...: kube-stepup: ...`), and none at all when the
/// command reached a container (`command terminated with exit code`: the request was admitted,
/// so whatever the container printed is not a refusal). Anything else that prints a trailer (a
/// script, a container's stderr through `kubectl exec`) gets no prompt and no grant.
pub fn api_refusal_in(stderr: &str) -> Option<Requirement> {
    if stderr.lines().any(|l| l.starts_with("command terminated with exit code")) {
        return None;
    }
    // `Error from server (Forbidden): [error when deleting "f.yaml": ]admission webhook ...`
    let denial = format!("admission webhook \"{}\" denied the request: ", stepup_core::api::ENFORCING_WEBHOOK);
    merge(
        stderr
            .lines()
            .filter_map(|l| l.strip_prefix("Error from server (Forbidden): "))
            .filter_map(|l| l.split_once(&denial).map(|(_, message)| message).or_else(|| authorizer_denial(l)))
            .flat_map(requirements_in)
            .collect(),
    )
}

/// The authorizer's reason in the API server's Forbidden message for a read:
/// `secrets "db" is forbidden: User "alice" cannot get resource "secrets" in API group "" in
/// the namespace "prod": kube-stepup: ...` → `kube-stepup: ...`.
fn authorizer_denial(line: &str) -> Option<&str> {
    let (_, user) = line.split_once(" is forbidden: User \"")?;
    let (_, rest) = user.split_once("\" cannot ")?;
    rest.split_once(": kube-stepup: ").map(|(_, reason)| reason)
}

/// The requirement carried by an API error's Status, from its cause or else its message.
pub fn from_status(status: &Status) -> Option<Requirement> {
    let from_cause = status
        .details
        .iter()
        .flat_map(|d| &d.causes)
        .filter(|c| c.reason == CAUSE_REASON)
        .find_map(|c| c.message.parse().ok());
    from_cause.or_else(|| refusal_in(&status.message))
}

/// One requirement that satisfies all: every policy, methods all accept, the smallest max age,
/// a reason if any needs one.
pub fn merge(requirements: Vec<Requirement>) -> Option<Requirement> {
    let mut iter = requirements.into_iter();
    let mut merged = iter.next()?;
    for r in iter {
        for p in r.policies {
            if !merged.policies.contains(&p) {
                merged.policies.push(p);
            }
        }
        merged.methods.retain(|m| r.methods.contains(m));
        merged.max_age = merged.max_age.min(r.max_age);
        merged.reason_required |= r.reason_required;
    }
    Some(merged)
}

#[cfg(test)]
mod tests {
    use kube::core::response::StatusDetails;

    use super::*;
    use stepup_core::api::{Duration, Method};

    /// Attack (third round): a wrapped command printed a trailer itself and exited 0, and the
    /// wrapper minted an unscoped grant and ran it twice. Only kubectl's line for the enforcing
    /// webhook's denial counts, and nothing after a container ran.
    #[test]
    fn only_the_api_servers_denial_line_is_a_refusal() {
        let trailer = "[stepup-required: policies=prod-secrets methods=TOTP max-age=15m reason-required=false]";
        let real = format!(
            "Error from server (Forbidden): admission webhook \"validate.stepup.dev\" denied the request: kube-stepup: delete secrets \"db\" in namespace \"prod\" requires step-up (policy \"prod-secrets\"). {trailer}\n"
        );
        assert_eq!(api_refusal_in(&real).map(|r| r.policies), Some(vec!["prod-secrets".to_owned()]));
        let from_a_file = format!(
            "Error from server (Forbidden): error when creating \"p.yaml\": admission webhook \"validate.stepup.dev\" denied the request: kube-stepup: ... {trailer}\n"
        );
        assert!(api_refusal_in(&from_a_file).is_some(), "kubectl apply -f says which file");
        let read = format!(
            "Error from server (Forbidden): secrets \"db\" is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \"\" in the namespace \"prod\": kube-stepup: get secrets \"db\" in namespace \"prod\" requires step-up (policy \"prod-secrets\"). {trailer}\n"
        );
        assert_eq!(
            api_refusal_in(&read).map(|r| r.policies),
            Some(vec!["prod-secrets".to_owned()]),
            "the authorizer's"
        );
        for fake in [
            format!("{trailer}\n"),
            format!("ran\n{trailer}\n"),
            format!(
                "Error from server (Forbidden): admission webhook \"advise.stepup.dev\" denied the request: {trailer}\n"
            ),
            format!(
                "  Error from server (Forbidden): admission webhook \"validate.stepup.dev\" denied the request: {trailer}\n"
            ),
            format!("{real}command terminated with exit code 1\n"),
            // RBAC's own refusal carries no stepup reason; a trailer elsewhere on the line is not one.
            format!(
                "Error from server (Forbidden): secrets is forbidden: User \"alice\" cannot list resource \"secrets\" {trailer}\n"
            ),
        ] {
            assert_eq!(api_refusal_in(&fake), None, "{fake:?}");
        }
    }

    fn requirement(policies: &[&str], max_age: u64, reason: bool) -> Requirement {
        Requirement {
            policies: policies.iter().map(|p| p.to_string()).collect(),
            methods: vec![Method::Totp],
            max_age: Duration::from_secs(max_age),
            reason_required: reason,
            acr_values: Vec::new(),
            amr: Vec::new(),
            user_verification: false,
            reference: None,
        }
    }

    const KUBECTL_STDERR: &str = "Error from server (Forbidden): admission webhook \"validate.stepup.dev\" denied the request: \
        kube-stepup: delete secrets \"db\" in namespace \"prod\" requires step-up (policy \"prod-secrets\"): a TOTP grant \
        issued within the last 15m. You hold no grant. Run `kubectl stepup request` and retry, or prefix your command \
        with `kubectl stepup --`. [stepup-required: policies=prod-secrets methods=TOTP max-age=15m reason-required=false]\n";

    #[test]
    fn reads_the_trailer_kubectl_prints() {
        assert_eq!(refusal_in(KUBECTL_STDERR), Some(requirement(&["prod-secrets"], 900, false)));
    }

    #[test]
    fn reads_back_what_the_webhook_writes() {
        for r in [
            requirement(&["a"], 900, false),
            requirement(&["a", "b-c.d"], 90, true),
            requirement(&["x"], 5400, false),
            Requirement { methods: vec![], ..requirement(&["none-in-common"], 60, false) },
            Requirement {
                methods: vec![Method::WebAuthn],
                user_verification: true,
                ..requirement(&["keys-with-pin"], 60, false)
            },
        ] {
            assert_eq!(r.to_string().parse::<Requirement>(), Ok(r.clone()), "{r}");
        }
    }

    #[test]
    fn tolerates_unknown_keys_and_methods_from_newer_webhooks() {
        let r: Requirement =
            "policies=p methods=TOTP,Approval max-age=5m reason-required=true approvers=2".parse().unwrap();
        assert_eq!(r, Requirement { max_age: Duration::from_secs(300), ..requirement(&["p"], 0, true) });
    }

    #[test]
    fn ignores_text_without_a_well_formed_trailer() {
        for text in [
            "",
            "Error from server (NotFound): secrets \"db\" not found",
            "[stepup-required: policies=p methods=TOTP",
            "[stepup-required: methods=TOTP max-age=15m reason-required=false]",
            "[stepup-required: policies=p methods=TOTP max-age=soon reason-required=false]",
            "[stepup-required: policies=p methods=TOTP max-age=15m reason-required=maybe]",
            "[stepup-required: garbage]",
        ] {
            assert_eq!(refusal_in(text), None, "{text:?}");
        }
    }

    #[test]
    fn merges_the_refusals_of_several_objects() {
        let stderr = "Error from server (Forbidden): ... [stepup-required: policies=a methods=TOTP max-age=15m reason-required=false]\n\
                      Error from server (Forbidden): ... [stepup-required: policies=b,a methods=TOTP max-age=5m reason-required=true]\n";
        assert_eq!(requirements_in(stderr).len(), 2);
        assert_eq!(refusal_in(stderr), Some(requirement(&["a", "b"], 300, true)));
    }

    #[test]
    fn reads_the_status_cause_first_then_the_message() {
        let cause = serde_json::json!({
            "reason": CAUSE_REASON,
            "message": "policies=rbac methods=TOTP max-age=5m reason-required=true",
            "field": "stepup.dev/requirement",
        });
        let status = Status {
            code: 403,
            message: "denied".into(),
            details: Some(serde_json::from_value::<StatusDetails>(serde_json::json!({"causes": [cause]})).unwrap()),
            ..Status::default()
        };
        assert_eq!(from_status(&status), Some(requirement(&["rbac"], 300, true)));
        let message_only = Status { code: 403, message: KUBECTL_STDERR.into(), ..Status::default() };
        assert_eq!(from_status(&message_only), Some(requirement(&["prod-secrets"], 900, false)));
        assert_eq!(from_status(&Status { code: 403, message: "forbidden".into(), ..Status::default() }), None);
    }
}
