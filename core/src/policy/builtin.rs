//! Built-in policies the chart turns on with flags.

use crate::{
    api::{Duration, Enforcement, Method, Operation, PolicyMatch, ResourceRule, StepUpPolicySpec, Subjects},
    policy::CompiledPolicy,
};

/// Name of the built-in policy that makes StepUpPolicy changes step-up operations.
pub const POLICY_CHANGES: &str = "stepup-builtin-policy-changes";

/// Name of the built-in policy that makes an admin's acts on another user's enrollment
/// (approve a key, allow a re-enrollment, unlock) step-up operations.
pub const ADMIN_ACTS: &str = "stepup-builtin-admin-acts";

/// Creating, changing or deleting a StepUpPolicy requires a grant no older than `max_age`:
/// otherwise stolen credentials could simply delete the policies.
pub fn policy_changes(max_age: Duration) -> CompiledPolicy {
    let spec = StepUpPolicySpec {
        match_: PolicyMatch {
            rules: vec![ResourceRule {
                operations: vec![Operation::All],
                api_groups: vec![crate::api::GROUP.to_owned()],
                api_versions: vec!["*".to_owned()],
                resources: vec!["stepuppolicies".to_owned()],
                verbs: Vec::new(),
            }],
            // Everyone, not only people: a made-up `system:` name or a workload's is as good a
            // mask for deleting the policies as any (the controller's pod is exempt anyway).
            subjects: Some(Subjects { users: vec!["*".to_owned()], ..Default::default() }),
            ..Default::default()
        },
        enforcement: Enforcement::Deny,
        max_age,
        methods: vec![Method::Totp],
        assurance: None,
        message: Some("StepUpPolicy changes are themselves step-up operations.".to_owned()),
        require_reason: false,
        require_user_verification: false,
    };
    compile(POLICY_CHANGES, &spec)
}

/// Approving, resetting or unlocking another user's enrollment requires a grant of the admin no
/// older than `max_age`: otherwise a stolen admin credential, with the power to impersonate,
/// could approve its own key for anyone's enrollment and so obtain their second factor. The
/// webhook applies it only to those acts (see `decision::own_kinds`), never to a user's own
/// enrollment, so the first admin can always enroll (through the bootstrap).
pub fn admin_acts(max_age: Duration) -> CompiledPolicy {
    let spec = StepUpPolicySpec {
        match_: PolicyMatch {
            rules: vec![ResourceRule {
                operations: vec![Operation::Update],
                api_groups: vec![crate::api::GROUP.to_owned()],
                api_versions: vec!["*".to_owned()],
                resources: vec!["stepupenrollments".to_owned()],
                verbs: Vec::new(),
            }],
            ..Default::default()
        },
        enforcement: Enforcement::Deny,
        max_age,
        methods: vec![Method::Totp],
        assurance: None,
        message: Some(
            "Approving, resetting and unlocking another user's enrollment are themselves step-up operations."
                .to_owned(),
        ),
        require_reason: false,
        require_user_verification: false,
    };
    compile(ADMIN_ACTS, &spec)
}

/// The specs above are fixed and valid; only a `max_age` outside
/// [`super::MAX_AGE_RANGE`] could fail, and the flag that sets it is checked with
/// [`super::check_max_age`] when it is parsed. Should one slip through, the nearest valid age
/// is used rather than stopping the webhook.
fn compile(name: &str, spec: &StepUpPolicySpec) -> CompiledPolicy {
    CompiledPolicy::compile_spec(name.to_owned(), spec).unwrap_or_else(|_| {
        let (min, max) = (super::MAX_AGE_RANGE.start(), super::MAX_AGE_RANGE.end());
        let max_age = Duration::from_secs(spec.max_age.as_std().clamp(*min, *max).as_secs());
        let spec = StepUpPolicySpec { max_age, ..spec.clone() };
        CompiledPolicy::compile_spec(name.to_owned(), &spec).expect("a built-in policy in range compiles")
    })
}
