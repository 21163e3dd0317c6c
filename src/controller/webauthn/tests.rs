//! Each rule of the relying party, attempted as an attack with webauthn-authenticator-rs's
//! software authenticator (the same ceremonies a browser runs; e2e runs them in Chromium).

use webauthn_authenticator_rs::{WebauthnAuthenticator, softpasskey::SoftPasskey};
use webauthn_rs_core::proto::{CreationChallengeResponse, RequestChallengeResponse};

use super::*;

fn t0() -> Timestamp {
    "2026-12-07T10:00:00Z".parse().unwrap()
}

fn url(u: &str) -> Url {
    Url::parse(u).unwrap()
}

/// The plugin's own page: `http://localhost` on a port of the moment.
fn loopback() -> RelyingParty {
    RelyingParty::new("localhost", &[url("http://localhost")]).unwrap()
}

const PAGE: &str = "http://localhost:38211";

/// A security key: `verifies` says whether it verifies its user (PIN, biometric).
struct Key(SoftPasskey);

impl Key {
    fn new(verifies: bool) -> Self {
        Key(SoftPasskey::new(verifies))
    }

    fn answer_registration(&mut self, options: &str, origin: &str) -> String {
        let options: CreationChallengeResponse = serde_json::from_str(options).unwrap();
        let answer = self.0.do_registration(url(origin), options).expect("the key registers");
        serde_json::to_string(&answer).unwrap()
    }

    fn answer(&mut self, options: &str, origin: &str) -> String {
        let options: RequestChallengeResponse = serde_json::from_str(options).unwrap();
        let answer = self.0.do_authentication(url(origin), options).expect("the key signs");
        serde_json::to_string(&answer).unwrap()
    }

    /// Registered to `user` at the loopback page.
    fn register(&mut self, rp: &RelyingParty, user: &str, existing: &[StoredCredential]) -> StoredCredential {
        let (options, pending) = rp.start_registration(user, user.as_bytes(), existing, t0()).unwrap();
        let answer = self.answer_registration(&options, PAGE);
        rp.finish_registration(&pending, user, &answer, existing, t0(), CEREMONY_TTL).expect("registered")
    }
}

#[test]
fn a_registered_key_proves_presence_and_its_counter_moves_forward() {
    let rp = loopback();
    let mut key = Key::new(false);
    let stored = key.register(&rp, "alice", &[]);
    // What is kept is public: the id, the public key, the counter.
    let kept = serde_json::to_string(&stored).unwrap();
    assert!(kept.contains("\"cred_id\"") && kept.contains("\"counter\""), "{kept}");
    let again: StoredCredential = serde_json::from_str(&kept).unwrap();
    assert_eq!(again.id_hash(), stored.id_hash());

    let (options, pending) = rp.start_authentication("alice", std::slice::from_ref(&stored), false, t0()).unwrap();
    assert!(options.contains("\"allowCredentials\""), "{options}");
    let answer = key.answer(&options, PAGE);
    let verified = rp.finish_authentication(pending, "alice", &answer, std::slice::from_ref(&stored), t0()).unwrap();
    assert_eq!(verified.credential_id_hash, stored.id_hash());
    assert!(!verified.user_verified, "a touch only");
    assert!(verified.counter > stored.counter());
    assert_eq!(verified.updated.counter(), verified.counter, "the new counter is what is stored");

    // The next ceremony, against the updated credential, moves it on again.
    let (options, pending) =
        rp.start_authentication("alice", std::slice::from_ref(&verified.updated), false, t0()).unwrap();
    let answer = key.answer(&options, PAGE);
    let next =
        rp.finish_authentication(pending, "alice", &answer, std::slice::from_ref(&verified.updated), t0()).unwrap();
    assert!(next.counter > verified.counter);
}

#[test]
fn user_verification_is_demanded_where_the_policy_needs_it() {
    let rp = loopback();
    let mut verifying = Key::new(true);
    let stored = verifying.register(&rp, "alice", &[]);
    let (options, pending) = rp.start_authentication("alice", std::slice::from_ref(&stored), true, t0()).unwrap();
    assert!(options.contains("\"userVerification\":\"required\""), "{options}");
    let answer = verifying.answer(&options, PAGE);
    let verified = rp.finish_authentication(pending, "alice", &answer, std::slice::from_ref(&stored), t0()).unwrap();
    assert!(verified.user_verified);

    // Attack: a client that drops the demand, with a key that only reports a touch.
    let mut touching = Key::new(false);
    let stored = touching.register(&rp, "alice", &[]);
    let (options, pending) = rp.start_authentication("alice", std::slice::from_ref(&stored), true, t0()).unwrap();
    let lowered = options.replace("\"userVerification\":\"required\"", "\"userVerification\":\"preferred\"");
    let answer = touching.answer(&lowered, PAGE);
    let refused = rp.finish_authentication(pending, "alice", &answer, &[stored], t0()).unwrap_err();
    assert_eq!(refused, Refusal::UserNotVerified);
}

#[test]
fn an_answer_made_for_another_site_is_refused() {
    // An organisation's own origin: credentials bound to its domain.
    let rp = RelyingParty::new("stepup.example.com", &[url("https://stepup.example.com")]).unwrap();
    let mut key = Key::new(false);
    let (options, pending) = rp.start_registration("alice", b"alice", &[], t0()).unwrap();
    let answer = key.answer_registration(&options, "https://stepup.example.com");
    let stored = rp.finish_registration(&pending, "alice", &answer, &[], t0(), CEREMONY_TTL).unwrap();
    // Attack: a phishing page on a subdomain relays the options; the browser signs for the
    // page it is on, and the answer names that origin.
    let (options, pending) = rp.start_authentication("alice", std::slice::from_ref(&stored), false, t0()).unwrap();
    let phished = key.answer(&options, "https://login.stepup.example.com");
    assert_eq!(
        rp.finish_authentication(pending, "alice", &phished, std::slice::from_ref(&stored), t0()).unwrap_err(),
        Refusal::WrongOrigin
    );
    // And a registration made there.
    let (options, pending) = rp.start_registration("alice", b"alice", std::slice::from_ref(&stored), t0()).unwrap();
    let answer = Key::new(false).answer_registration(&options, "https://login.stepup.example.com");
    assert_eq!(
        rp.finish_registration(&pending, "alice", &answer, &[stored], t0(), CEREMONY_TTL).unwrap_err(),
        Refusal::WrongOrigin
    );
}

#[test]
fn an_answer_is_good_for_its_own_ceremony_only() {
    let rp = loopback();
    let mut key = Key::new(false);
    let stored = key.register(&rp, "alice", &[]);
    let (options, first) = rp.start_authentication("alice", std::slice::from_ref(&stored), false, t0()).unwrap();
    let (_, second) = rp.start_authentication("alice", std::slice::from_ref(&stored), false, t0()).unwrap();
    let answer = key.answer(&options, PAGE);
    // Attack: the answer to one challenge presented for another (a replay into a new one).
    assert_eq!(
        rp.finish_authentication(second, "alice", &answer, std::slice::from_ref(&stored), t0()).unwrap_err(),
        Refusal::OtherChallenge
    );
    // The ceremony it was made for is bound to its person and its time.
    assert!(matches!(
        rp.finish_authentication(first.clone(), "bob", &answer, std::slice::from_ref(&stored), t0()).unwrap_err(),
        Refusal::OtherUser { .. }
    ));
    let late = t0() + CEREMONY_TTL + SignedDuration::from_secs(1);
    assert!(matches!(
        rp.finish_authentication(first.clone(), "alice", &answer, std::slice::from_ref(&stored), late).unwrap_err(),
        Refusal::Expired(_)
    ));
    rp.finish_authentication(first, "alice", &answer, &[stored], t0()).expect("in time, for alice");
}

#[test]
fn only_a_key_registered_to_the_person_and_still_registered_counts() {
    let rp = loopback();
    let mut alices = Key::new(false);
    let alice = alices.register(&rp, "alice", &[]);
    let mut mallorys = Key::new(false);
    let mallory = mallorys.register(&rp, "mallory", &[]);
    // Attack: alice's ceremony answered with a key registered to someone else (the options
    // rewritten to name it).
    let (options, pending) = rp.start_authentication("alice", std::slice::from_ref(&alice), false, t0()).unwrap();
    let mallory_id = serde_json::to_value(&mallory).unwrap()["cred_id"].as_str().unwrap().to_owned();
    let alice_id = serde_json::to_value(&alice).unwrap()["cred_id"].as_str().unwrap().to_owned();
    let rewritten = options.replace(&alice_id, &mallory_id);
    assert_ne!(rewritten, options);
    let answer = mallorys.answer(&rewritten, PAGE);
    assert_eq!(
        rp.finish_authentication(pending, "alice", &answer, std::slice::from_ref(&alice), t0()).unwrap_err(),
        Refusal::UnknownCredential
    );
    // A key removed after the options went out counts for nothing.
    let (options, pending) = rp.start_authentication("alice", std::slice::from_ref(&alice), false, t0()).unwrap();
    let answer = alices.answer(&options, PAGE);
    assert_eq!(rp.finish_authentication(pending, "alice", &answer, &[], t0()).unwrap_err(), Refusal::UnknownCredential);
    // Nobody without a key gets options at all.
    assert_eq!(rp.start_authentication("bob", &[], false, t0()).unwrap_err(), Refusal::NoCredential);
}

#[test]
fn a_counter_that_does_not_move_forward_marks_a_cloned_key() {
    let rp = loopback();
    let mut key = Key::new(false);
    let stored = key.register(&rp, "alice", &[]);
    // The genuine key has signed many times since (its stored counter says so); a clone
    // made earlier still counts from where it was copied.
    let mut ahead = serde_json::to_value(&stored).unwrap();
    ahead["counter"] = 1000.into();
    let ahead: StoredCredential = serde_json::from_value(ahead).unwrap();

    // Counted at the start of the ceremony (webauthn-rs's own check)...
    let (options, pending) = rp.start_authentication("alice", std::slice::from_ref(&ahead), false, t0()).unwrap();
    let answer = key.answer(&options, PAGE);
    let refused = rp.finish_authentication(pending, "alice", &answer, std::slice::from_ref(&ahead), t0()).unwrap_err();
    assert!(
        matches!(refused, Refusal::ClonedAuthenticator { stored: 1000, presented } if presented < 1000),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("may be a clone of your key"), "{refused}");

    // ...and against the newest stored counter at the end (the genuine key answered another
    // ceremony in between).
    let (options, pending) = rp.start_authentication("alice", std::slice::from_ref(&stored), false, t0()).unwrap();
    let answer = key.answer(&options, PAGE);
    let refused = rp.finish_authentication(pending, "alice", &answer, &[ahead], t0()).unwrap_err();
    assert!(matches!(refused, Refusal::ClonedAuthenticator { stored: 1000, .. }), "{refused:?}");
}

#[test]
fn a_key_registers_once_and_answers_that_are_not_webauthn_are_refused_by_name() {
    let rp = loopback();
    let mut key = Key::new(false);
    let (options, pending) = rp.start_registration("alice", b"alice", &[], t0()).unwrap();
    let answer = key.answer_registration(&options, PAGE);
    let stored = rp.finish_registration(&pending, "alice", &answer, &[], t0(), CEREMONY_TTL).unwrap();
    assert_eq!(
        rp.finish_registration(&pending, "alice", &answer, std::slice::from_ref(&stored), t0(), CEREMONY_TTL)
            .unwrap_err(),
        Refusal::AlreadyRegistered
    );
    for garbage in ["", "{}", "null", "{\"id\": 7}"] {
        assert!(matches!(
            rp.finish_registration(&pending, "alice", garbage, &[], t0(), CEREMONY_TTL).unwrap_err(),
            Refusal::Malformed(_)
        ));
    }
    let (_, auth) = rp.start_authentication("alice", std::slice::from_ref(&stored), false, t0()).unwrap();
    let huge = format!("{{\"id\": \"{}\"}}", "a".repeat(MAX_RESPONSE_BYTES));
    let refused = rp.finish_authentication(auth, "alice", &huge, &[stored], t0()).unwrap_err();
    assert!(matches!(&refused, Refusal::Malformed(why) if why.contains("more than")), "{refused:?}");
}

#[test]
fn a_relying_party_is_only_where_browsers_run_webauthn() {
    for (rp_id, origin, why) in [
        ("localhost", "http://127.0.0.1", "neither https nor http://localhost"),
        ("stepup.example.com", "http://stepup.example.com", "neither https nor http://localhost"),
        ("stepup.example.com", "https://evil.example", "not within the rp id"),
        ("stepup.example.com", "https://notstepup.example.com", "not within the rp id"),
        ("https://stepup.example.com", "https://stepup.example.com", "must be a domain name"),
    ] {
        let err = RelyingParty::new(rp_id, &[url(origin)]).err().expect("refused").to_string();
        assert!(err.contains(why), "{rp_id} {origin}: {err}");
    }
    assert!(RelyingParty::new("localhost", &[]).is_err());
}
