//! Hostile input to the plugin, as property tests: its reading of denial trailers and of codes
//! never panics, whatever it is given, and reads back what the webhook writes.

use kubectl_stepup::{terminal::normalize_code, trailer};
use proptest::prelude::*;
use stepup_core::{api::Method, decision::Requirement};

proptest! {
    #[test]
    fn denial_trailers_read_back_what_was_written(
        policies in proptest::collection::vec("[a-z0-9][-a-z0-9]{0,20}", 1..4),
        max_age in 1u64..86_400,
        reason_required in any::<bool>(),
        session in any::<bool>(),
        user_verification in any::<bool>(),
        acr_values in proptest::collection::vec("[a-zA-Z0-9:._/-]{1,12}", 0..3),
        amr in proptest::collection::vec("[a-z]{2,5}", 0..3),
        reference in proptest::option::of("[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}"),
        noise in ".{0,80}",
    ) {
        let requirement = Requirement {
            policies,
            methods: if session { vec![Method::Totp, Method::Session] } else { vec![Method::Totp] },
            max_age: stepup_core::api::Duration::from_secs(max_age),
            reason_required,
            acr_values,
            amr,
            user_verification,
            reference,
        };
        let text = format!("{noise} [stepup-required: {requirement}] {noise}");
        let found = trailer::requirements_in(&text);
        prop_assert!(found.contains(&requirement), "{text:?} gave {found:?}");
    }

    #[test]
    fn arbitrary_text_never_panics_the_trailer_reader(text in ".{0,400}") {
        let _ = trailer::requirements_in(&text);
        let _ = trailer::refusal_in(&text);
        let _ = text.parse::<Requirement>();
    }

    #[test]
    fn only_six_digits_are_codes(input in ".{0,20}") {
        if let Ok(code) = normalize_code(&input) {
            prop_assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
