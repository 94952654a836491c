//! Who may use one database in this isolate right now: the lane of a [`crate::registry`]
//! slot. One holder at a time takes the value (the open database) out of the lane and gives
//! it back when done.
//!
//! A holder can stop for good without giving it back: workerd stops polling a request whose
//! client went away, and ends a `waitUntil` task (a quiet checkpoint) 30 s after the answer.
//! Nothing would ever run on that database in this isolate again. So a hold older than its
//! bound may be *reaped*: the lane starts over from a fresh value (the database is opened
//! again from R2) and the old holder's value is dropped when it comes back. That is safe
//! because nothing in the isolate is authoritative: if the old holder was only slow, it is
//! one more writer, fenced by the conditional PUTs like a writer in another isolate.

/// A lane's hold, named so that only its holder can give the value back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldToken(u64);

enum LaneState<T> {
    Free(T),
    Held { token: HoldToken, since_ms: f64 },
}

pub struct Lane<T> {
    state: LaneState<T>,
    next_token: u64,
}

impl<T> Lane<T> {
    pub fn new(value: T) -> Self {
        Lane { state: LaneState::Free(value), next_token: 0 }
    }

    /// Takes the value if nobody holds it; the token gives it back.
    pub fn try_take(&mut self, now_ms: f64) -> Option<(T, HoldToken)> {
        if let LaneState::Held { .. } = self.state {
            return None;
        }
        let token = HoldToken(self.next_token);
        self.next_token += 1;
        match std::mem::replace(&mut self.state, LaneState::Held { token, since_ms: now_ms }) {
            LaneState::Free(value) => Some((value, token)),
            LaneState::Held { .. } => unreachable!("checked free above"),
        }
    }

    /// Gives the value back. False (and the value is dropped) if this hold was reaped
    /// meanwhile: the lane has moved on without it.
    pub fn give_back(&mut self, token: HoldToken, value: T) -> bool {
        match self.state {
            LaneState::Held { token: current, .. } if current == token => {
                self.state = LaneState::Free(value);
                true
            }
            _ => false,
        }
    }

    /// Ends a hold older than `limit_ms`, leaving `fresh` in the lane. Returns the token
    /// of the hold it ended.
    pub fn reap_if_older(&mut self, now_ms: f64, limit_ms: f64, fresh: impl FnOnce() -> T) -> Option<HoldToken> {
        match self.state {
            LaneState::Held { token, since_ms } if now_ms - since_ms > limit_ms => {
                self.state = LaneState::Free(fresh());
                Some(token)
            }
            _ => None,
        }
    }

    /// The value, if nobody holds it.
    pub fn free(&self) -> Option<&T> {
        match &self.state {
            LaneState::Free(value) => Some(value),
            LaneState::Held { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let mut lane = Lane::new(1);
        let (v, token) = lane.try_take(0.0).unwrap();
        assert_eq!(v, 1);
        assert!(lane.try_take(1.0).is_none());
        assert!(lane.free().is_none());
        assert!(lane.give_back(token, 2));
        assert_eq!(lane.free(), Some(&2));
        assert_eq!(lane.try_take(2.0).unwrap().0, 2);
    }

    #[test]
    fn a_stuck_hold_is_reaped_and_its_value_dropped_when_it_comes_back() {
        let mut lane = Lane::new("open");
        let (_, stuck) = lane.try_take(0.0).unwrap();
        assert_eq!(lane.reap_if_older(1_000.0, 1_000.0, || "fresh"), None, "not older than the bound yet");
        assert_eq!(lane.reap_if_older(1_001.0, 1_000.0, || "fresh"), Some(stuck));
        let (v, next) = lane.try_take(1_002.0).unwrap();
        assert_eq!(v, "fresh");
        assert!(!lane.give_back(stuck, "stale"), "the reaped holder cannot put its value back");
        assert!(lane.free().is_none(), "the new hold stands");
        assert!(lane.give_back(next, "newer"));
        assert_eq!(lane.free(), Some(&"newer"));
    }

    #[test]
    fn a_free_lane_is_never_reaped() {
        let mut lane = Lane::new(7);
        assert_eq!(lane.reap_if_older(f64::MAX, 0.0, || 0), None);
        assert_eq!(lane.free(), Some(&7));
    }
}
