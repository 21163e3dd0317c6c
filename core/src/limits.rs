//! Per-user limits on challenges: how many may wait for a verdict at once, and how many may be
//! created per window. Enforced twice from the same rule: by the webhook before a challenge is
//! stored (from a watch-fed [`ChallengeView`]), and by the controller from its own cache before
//! it spends API calls on one, so that one user's flood cannot queue everyone else's step-ups.
//! Pure: no I/O and no clock (callers pass the time).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use jiff::{SignedDuration, Timestamp};

use crate::api::{ChallengePhase, StepUpChallenge};

/// The limits, one setting for the webhook and the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChallengeLimits {
    /// Challenges of one user waiting for a verdict at once; `0` turns the limit off.
    pub max_pending: u32,
    /// Challenges one user may create within `window`; `0` turns the limit off.
    pub max_per_window: u32,
    pub window: SignedDuration,
}

impl Default for ChallengeLimits {
    fn default() -> Self {
        Self { max_pending: 3, max_per_window: 10, window: SignedDuration::from_mins(1) }
    }
}

/// What one user already has: challenges pending, and challenges created within the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub pending: u32,
    pub recent: u32,
    /// When the oldest creation inside the window leaves it (the earliest moment one more fits).
    pub frees_at: Option<Timestamp>,
}

/// Why one more challenge is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyPending { pending: u32, max: u32 },
    TooFast { recent: u32, max: u32, window: SignedDuration, retry_after: Option<SignedDuration> },
}

impl Refusal {
    /// Low-cardinality label: the metric and the challenge status reason.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::TooManyPending { .. } => "too_many_pending",
            Refusal::TooFast { .. } => "creation_rate",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TooManyPending { .. } => "TooManyPending",
            Refusal::TooFast { .. } => "CreationRateLimited",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooManyPending { pending, max } => write!(
                f,
                "{pending} of your challenges are already waiting for the controller (at most {max}): wait for their verdict and try again"
            ),
            Refusal::TooFast { recent, max, window, retry_after } => {
                write!(f, "you created {recent} challenges within {} (at most {max})", crate::grant::human(*window))?;
                match retry_after {
                    Some(after) => write!(f, ": try again in {}", crate::grant::human(*after)),
                    None => write!(f, ": try again shortly"),
                }
            }
        }
    }
}

impl ChallengeLimits {
    /// Whether one more challenge fits on top of `load` at `now`.
    pub fn check(&self, load: &Load, now: Timestamp) -> Result<(), Refusal> {
        if self.max_pending > 0 && load.pending >= self.max_pending {
            return Err(Refusal::TooManyPending { pending: load.pending, max: self.max_pending });
        }
        if self.max_per_window > 0 && load.recent >= self.max_per_window {
            let retry_after = load.frees_at.map(|t| t.duration_since(now).max(SignedDuration::from_secs(1)));
            return Err(Refusal::TooFast {
                recent: load.recent,
                max: self.max_per_window,
                window: self.window,
                retry_after,
            });
        }
        Ok(())
    }
}

/// Whether a challenge still waits for a verdict (withdrawn ones do not).
pub fn is_pending(c: &StepUpChallenge) -> bool {
    c.metadata.deletion_timestamp.is_none()
        && matches!(c.status.as_ref().and_then(|s| s.phase), None | Some(ChallengePhase::Pending))
}

fn created(c: &StepUpChallenge) -> Option<Timestamp> {
    c.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The controller's view: what the challenges created before `this` by the same user add up
/// to. "Before" is the order of creation (then name), so the same challenge always gets the
/// same answer, however often it is reconciled.
pub fn load_before<'a>(
    this: &StepUpChallenge,
    all: impl IntoIterator<Item = &'a StepUpChallenge>,
    window: SignedDuration,
) -> Load {
    let user = &this.spec.user;
    let Some(at) = created(this) else { return Load::default() };
    let name = this.metadata.name.as_deref().unwrap_or("");
    let mut load = Load::default();
    for c in all {
        let (Some(t), Some(n)) = (created(c), c.metadata.name.as_deref()) else { continue };
        if c.spec.user != *user || (t, n) >= (at, name) {
            continue;
        }
        if is_pending(c) {
            load.pending += 1;
        }
        if t > at - window {
            load.recent += 1;
            load.frees_at = Some(load.frees_at.map_or(t + window, |f: Timestamp| f.min(t + window)));
        }
    }
    load
}

/// Per user: the challenges that exist and whether each is pending, and when challenges were
/// created (kept after deletion, so that deleting a challenge does not make room for more).
#[derive(Debug, Default)]
struct UserLoad {
    pending: BTreeMap<String, bool>,
    created: VecDeque<i64>,
    /// Challenges this webhook admitted that its watch has not reported yet (name, when):
    /// counted at once, so that a burst cannot slip past a view that lags behind.
    reserved: BTreeMap<String, i64>,
}

/// How long an admitted challenge counts before the watch reports it; one the API server then
/// refused for another reason stops counting after this.
const RESERVATION_SECS: i64 = 10;

/// Most creation times remembered per user: bounded memory whatever a user does.
const MAX_REMEMBERED: usize = 1024;

/// The webhook's view of everyone's challenges, fed by a watch. Until its first list is
/// complete it reports nothing, and the controller's own check stands alone.
#[derive(Debug)]
pub struct ChallengeView {
    limits: ChallengeLimits,
    users: Mutex<HashMap<String, UserLoad>>,
    synced: AtomicBool,
}

impl ChallengeView {
    pub fn new(limits: ChallengeLimits) -> Self {
        Self { limits, users: Mutex::new(HashMap::new()), synced: AtomicBool::new(false) }
    }

    pub fn limits(&self) -> ChallengeLimits {
        self.limits
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<String, UserLoad>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A full list (the watch's initial list or a relist).
    pub fn replace<'a>(&self, all: impl IntoIterator<Item = &'a StepUpChallenge>) {
        let mut users: HashMap<String, UserLoad> = HashMap::new();
        for c in all {
            let entry = users.entry(c.spec.user.clone()).or_default();
            entry.pending.insert(c.metadata.name.clone().unwrap_or_default(), is_pending(c));
            if let Some(t) = created(c) {
                entry.created.push_back(t.as_second());
            }
        }
        for u in users.values_mut() {
            u.created.make_contiguous().sort_unstable();
            while u.created.len() > MAX_REMEMBERED {
                u.created.pop_front();
            }
        }
        *self.users() = users;
        self.synced.store(true, Ordering::Release);
    }

    /// A challenge created or changed.
    pub fn apply(&self, c: &StepUpChallenge, now: Timestamp) {
        let mut users = self.users();
        let entry = users.entry(c.spec.user.clone()).or_default();
        let name = c.metadata.name.clone().unwrap_or_default();
        // Confirmed: it now counts through `pending` and `created`, no longer as a reservation.
        entry.reserved.remove(&name);
        if entry.pending.insert(name, is_pending(c)).is_none()
            && let Some(t) = created(c)
        {
            entry.created.push_back(t.as_second());
        }
        let horizon = (now - self.limits.window).as_second();
        while entry.created.front().is_some_and(|t| *t <= horizon) || entry.created.len() > MAX_REMEMBERED {
            entry.created.pop_front();
        }
    }

    /// A challenge deleted: no longer pending, but its creation still counts in the window.
    pub fn delete(&self, c: &StepUpChallenge) {
        let mut users = self.users();
        if let Some(entry) = users.get_mut(&c.spec.user) {
            let name = c.metadata.name.as_deref().unwrap_or("");
            entry.pending.remove(name);
            entry.reserved.remove(name);
            if entry.pending.is_empty() && entry.created.is_empty() && entry.reserved.is_empty() {
                users.remove(&c.spec.user);
            }
        }
    }

    /// The watch broke: until the next full list, the view knows nothing.
    pub fn mark_broken(&self) {
        self.synced.store(false, Ordering::Release);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// `user`'s load at `now`; `None` when the view is not synced.
    pub fn load(&self, user: &str, now: Timestamp) -> Option<Load> {
        if !self.is_synced() {
            return None;
        }
        let users = self.users();
        Some(users.get(user).map_or_else(Load::default, |entry| self.load_of(entry, now)))
    }

    fn load_of(&self, entry: &UserLoad, now: Timestamp) -> Load {
        let horizon = (now - self.limits.window).as_second();
        let fresh = now.as_second() - RESERVATION_SECS;
        let reserved: Vec<i64> = entry.reserved.values().copied().filter(|t| *t > fresh).collect();
        let recent: Vec<i64> = entry.created.iter().chain(reserved.iter()).copied().filter(|t| *t > horizon).collect();
        Load {
            pending: (entry.pending.values().filter(|p| **p).count() + reserved.len()) as u32,
            recent: recent.len() as u32,
            frees_at: recent.iter().min().and_then(|t| Timestamp::from_second(t + self.limits.window.as_secs()).ok()),
        }
    }

    /// Whether `user` may create one more challenge at `now` (always, while not synced). With
    /// `reserve`, an admitted challenge named `name` counts from now on, before the watch sees it.
    pub fn admit(&self, user: &str, name: &str, now: Timestamp, reserve: bool) -> Result<(), Refusal> {
        if !self.is_synced() {
            return Ok(());
        }
        let mut users = self.users();
        let entry = users.entry(user.to_owned()).or_default();
        self.limits.check(&self.load_of(entry, now), now)?;
        if reserve && !name.is_empty() && !entry.pending.contains_key(name) {
            let fresh = now.as_second() - RESERVATION_SECS;
            entry.reserved.retain(|_, t| *t > fresh);
            entry.reserved.insert(name.to_owned(), now.as_second());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::{
        api::{GrantScope, Method, StepUpChallengeSpec, StepUpChallengeStatus},
        testing::t0,
    };

    fn at(secs: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(secs)
    }

    fn challenge(name: &str, user: &str, created_secs: i64, phase: Option<ChallengePhase>) -> StepUpChallenge {
        let mut c = StepUpChallenge::new(
            name,
            StepUpChallengeSpec {
                user: user.into(),
                uid: None,
                method: Method::Totp,
                response: None,
                reason: None,
                duration: None,
                scope: GrantScope::default(),
                deadline: None,
                correlation: None,
            },
        );
        c.metadata.creation_timestamp = Some(Time(at(created_secs)));
        c.status = phase.map(|p| StepUpChallengeStatus { phase: Some(p), ..Default::default() });
        c
    }

    fn limits() -> ChallengeLimits {
        ChallengeLimits { max_pending: 2, max_per_window: 4, window: SignedDuration::from_secs(60) }
    }

    #[test]
    fn a_user_with_too_many_pending_challenges_is_refused_and_others_are_not() {
        let view = ChallengeView::new(limits());
        let all = [
            challenge("b1", "bob", 0, None),
            challenge("b2", "bob", 1, Some(ChallengePhase::Pending)),
            challenge("a1", "alice", 1, None),
        ];
        view.replace(&all);
        let refusal = view.admit("bob", "b3", at(2), true).unwrap_err();
        assert_eq!(refusal, Refusal::TooManyPending { pending: 2, max: 2 });
        assert!(refusal.to_string().contains("2 of your challenges are already waiting"), "{refusal}");
        assert_eq!(view.admit("alice", "a2", at(2), false), Ok(()));
        assert_eq!(view.admit("carol", "c1", at(2), false), Ok(()));
        // A verdict frees a place.
        view.apply(&challenge("b2", "bob", 1, Some(ChallengePhase::Denied)), at(3));
        assert_eq!(view.admit("bob", "b3", at(3), false), Ok(()));
    }

    #[test]
    fn deleting_challenges_does_not_make_room_within_the_window() {
        let view = ChallengeView::new(limits());
        view.replace(std::iter::empty());
        for i in 0..4 {
            let c = challenge(&format!("b{i}"), "bob", i, Some(ChallengePhase::Denied));
            view.apply(&c, at(i));
            view.delete(&c);
        }
        let refusal = view.admit("bob", "b9", at(10), false).unwrap_err();
        assert!(
            matches!(refusal, Refusal::TooFast { recent: 4, retry_after: Some(d), .. } if d == SignedDuration::from_secs(50)),
            "{refusal:?}"
        );
        assert!(refusal.to_string().contains("try again in 50s"), "{refusal}");
        assert_eq!(view.admit("bob", "b9", at(61), false), Ok(()), "the window moves on");
    }

    #[test]
    fn a_burst_is_counted_before_the_watch_reports_it() {
        let view = ChallengeView::new(limits());
        view.replace(std::iter::empty());
        assert_eq!(view.admit("bob", "b1", at(0), true), Ok(()));
        assert_eq!(view.admit("bob", "b2", at(0), true), Ok(()));
        assert!(view.admit("bob", "b3", at(0), true).is_err(), "two admitted, none seen yet: the limit holds");
        // The watch reports them: counted once, not twice.
        view.apply(&challenge("b1", "bob", 0, None), at(1));
        assert_eq!(view.load("bob", at(1)).map(|l| (l.pending, l.recent)), Some((2, 2)));
        // A dry run reserves nothing; a reservation the watch never confirms lapses.
        let other = ChallengeView::new(limits());
        other.replace(std::iter::empty());
        other.admit("bob", "d1", at(0), false).unwrap();
        assert_eq!(other.load("bob", at(0)).map(|l| l.pending), Some(0));
        other.admit("bob", "r1", at(0), true).unwrap();
        assert_eq!(other.load("bob", at(11)).map(|l| l.pending), Some(0), "refused by the API server after all");
    }

    #[test]
    fn an_unsynced_view_refuses_nothing() {
        let view = ChallengeView::new(limits());
        assert_eq!(view.load("bob", at(0)), None);
        assert_eq!(view.admit("bob", "b0", at(0), true), Ok(()));
        view.replace([challenge("b1", "bob", 0, None), challenge("b2", "bob", 0, None)].iter());
        assert!(view.admit("bob", "b3", at(0), true).is_err());
        view.mark_broken();
        assert_eq!(view.admit("bob", "b3", at(0), true), Ok(()));
    }

    #[test]
    fn the_controller_counts_only_what_came_before_the_same_users_challenge() {
        let all = [
            challenge("b1", "bob", 0, None),
            challenge("b2", "bob", 5, None),
            challenge("b3", "bob", 5, Some(ChallengePhase::Verified)),
            challenge("b4", "bob", 9, None),
            challenge("a1", "alice", 1, None),
        ];
        let w = SignedDuration::from_secs(60);
        assert_eq!(load_before(&all[0], &all, w), Load::default());
        let third = load_before(&all[2], &all, w);
        assert_eq!((third.pending, third.recent), (2, 2), "b1 and b2, not itself or later ones");
        let fourth = load_before(&all[3], &all, w);
        assert_eq!((fourth.pending, fourth.recent), (2, 3));
        assert_eq!(limits().check(&fourth, at(9)), Err(Refusal::TooManyPending { pending: 2, max: 2 }));
        assert_eq!(load_before(&all[4], &all, w), Load::default(), "alice is not bob");
        let mut withdrawn = all[0].clone();
        withdrawn.metadata.deletion_timestamp = Some(Time(at(1)));
        let without = [withdrawn, all[1].clone(), all[3].clone()];
        assert_eq!(load_before(&all[3], &without, w).pending, 1, "a withdrawn challenge is not pending");
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let off = ChallengeLimits { max_pending: 0, max_per_window: 0, window: SignedDuration::from_secs(60) };
        assert_eq!(off.check(&Load { pending: 1000, recent: 1000, frees_at: None }, at(0)), Ok(()));
    }
}
