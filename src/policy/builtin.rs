//! Built-in policies the chart turns on with flags.

use crate::{
    api::{Duration, Enforcement, Method, Operation, PolicyMatch, ResourceRule, StepUpPolicySpec},
    policy::CompiledPolicy,
};

/// Name of the built-in policy that makes StepUpPolicy changes step-up operations.
pub const POLICY_CHANGES: &str = "stepup-builtin-policy-changes";

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
            }],
            ..Default::default()
        },
        enforcement: Enforcement::Deny,
        max_age,
        methods: vec![Method::Totp],
        message: Some("StepUpPolicy changes are themselves step-up operations.".to_owned()),
        require_reason: false,
    };
    // The spec above is fixed and valid, so this only fails for an out-of-range max_age,
    // which is clamped into range first.
    let mut spec = spec;
    spec.max_age = spec.max_age.clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600));
    CompiledPolicy::compile_spec(POLICY_CHANGES.to_owned(), &spec).expect("built-in policy compiles")
}
