//! GitLab Geo's two state machines and its retry schedule, as types.
//!
//! The database stores states as `smallint` (GitLab's values); the code only
//! ever handles the enums, converting at the boundary with `TryFrom<i16>`, so
//! an unknown number is an error, never a silent fifth state.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;

/// One of GitLab's state machines: the enum with its stored numbers, every
/// state (`ALL`), the number (`as_i16`), the GraphQL enum name and the
/// checked conversion back from a stored number.
macro_rules! state_machine {
    (
        $(#[$doc:meta])*
        $name:ident, $machine:literal,
        [$($state:ident = $value:literal => $graphql:literal),+ $(,)?]
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($state = $value),+
        }

        impl $name {
            pub const ALL: [$name; [$($value),+].len()] = [$($name::$state),+];

            pub fn as_i16(self) -> i16 {
                self as i16
            }

            /// GitLab's GraphQL enum name (`PENDING`, …).
            pub fn graphql_name(self) -> &'static str {
                match self {
                    $($name::$state => $graphql),+
                }
            }
        }

        impl TryFrom<i16> for $name {
            type Error = UnknownState;
            fn try_from(value: i16) -> Result<Self, UnknownState> {
                match value {
                    $($value => Ok($name::$state),)+
                    _ => Err(UnknownState {
                        machine: $machine,
                        value,
                    }),
                }
            }
        }
    };
}

state_machine!(
    /// A registry's sync state (secondary): `pending → started → synced | failed`.
    SyncState, "sync",
    [
        Pending = 0 => "PENDING",
        Started = 1 => "STARTED",
        Synced = 2 => "SYNCED",
        Failed = 3 => "FAILED",
    ]
);

state_machine!(
    /// A record's (primary) or registry's (secondary) verification state.
    VerificationState, "verification",
    [
        Pending = 0 => "PENDING",
        Started = 1 => "STARTED",
        Succeeded = 2 => "SUCCEEDED",
        Failed = 3 => "FAILED",
        Disabled = 4 => "DISABLED",
    ]
);

/// A stored state number that is no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {machine} state {value}")]
pub struct UnknownState {
    pub machine: &'static str,
    pub value: i16,
}

impl SyncState {
    /// Whether the `start` event may fire from this state (not from started).
    pub fn can_start(self) -> bool {
        self != SyncState::Started
    }
}

/// The states as SQL literals, for the statements that must name them:
/// a partial index (GitLab's `WHERE verification_state = 0`) serves only a
/// query whose condition names the same literal, so states are not bound
/// as arguments. SQL text takes its numbers from here, never from digits.
pub mod sql {
    use super::{SyncState, VerificationState};

    pub const S_PENDING: i16 = SyncState::Pending as i16;
    pub const S_STARTED: i16 = SyncState::Started as i16;
    pub const S_SYNCED: i16 = SyncState::Synced as i16;
    pub const S_FAILED: i16 = SyncState::Failed as i16;

    pub const V_PENDING: i16 = VerificationState::Pending as i16;
    pub const V_STARTED: i16 = VerificationState::Started as i16;
    pub const V_SUCCEEDED: i16 = VerificationState::Succeeded as i16;
    pub const V_FAILED: i16 = VerificationState::Failed as i16;
    pub const V_DISABLED: i16 = VerificationState::Disabled as i16;
}

/// The default cap on retry delays: one hour (plus `delay(1)`).
pub const RETRY_CAP: Duration = Duration::hours(1);
/// The cap for files missing on the primary: four hours.
pub const MISSING_ON_PRIMARY_CAP: Duration = Duration::hours(4);
/// Longest text kept in `last_sync_failure` and `verification_failure`.
pub const FAILURE_TEXT_MAX: usize = 255;
/// A `started` row older than this is stuck (sync and verification).
pub const DEFAULT_STUCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8 * 3600);

/// GitLab's `delay(n) = n⁴ + 15 + rand(30) × (n + 1)` seconds, with
/// `rand(30)` in `0..=29`.
pub fn delay(retry_count: i64, jitter: i64) -> Duration {
    let n = retry_count.clamp(0, 1_000);
    Duration::seconds(n.pow(4).saturating_add(15).saturating_add(jitter * (n + 1)))
}

/// The process's `workers.retry_delay_max_secs` (0: GitLab's schedule only).
static RETRY_DELAY_MAX_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Caps every retry delay of this process at `max` (the site's
/// `workers.retry_delay_max_secs`, set when it opens; `None`: GitLab's
/// schedule). Per process, like the engine's metrics: the sites of one
/// process share it.
pub fn set_retry_delay_max(max: Option<std::time::Duration>) {
    RETRY_DELAY_MAX_SECS.store(
        max.map_or(0, |d| d.as_secs().max(1)),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// GitLab's `next_retry_time(n, custom_max)`:
/// `min(now + delay(n), now + (custom_max or 1 h) + delay(1))`, then at
/// most `workers.retry_delay_max_secs` when set ([`set_retry_delay_max`]).
pub fn next_retry_time(
    now: DateTime<Utc>,
    retry_count: i64,
    custom_max: Option<Duration>,
) -> DateTime<Utc> {
    let mut rng = rand::rng();
    let wanted = delay(retry_count, rng.random_range(0..30));
    let cap = custom_max.unwrap_or(RETRY_CAP) + delay(1, rng.random_range(0..30));
    let mut chosen = wanted.min(cap);
    let max = RETRY_DELAY_MAX_SECS.load(std::sync::atomic::Ordering::Relaxed);
    if max > 0 {
        chosen = chosen.min(Duration::seconds(max as i64));
    }
    now + chosen
}

/// Cuts a failure text to GitLab's 255 characters.
pub fn failure_text(text: &str) -> String {
    text.chars().take(FAILURE_TEXT_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_reject_unknown_numbers() {
        for s in SyncState::ALL {
            assert_eq!(SyncState::try_from(s.as_i16()), Ok(s));
        }
        for s in VerificationState::ALL {
            assert_eq!(VerificationState::try_from(s.as_i16()), Ok(s));
        }
        assert!(SyncState::try_from(4).is_err());
        assert!(VerificationState::try_from(-1).is_err());
    }

    #[test]
    fn delays_match_gitlab_samples() {
        // n=1: 16–74 s; n=3: 96–212 s; n=5: 640–814 s (GitLab's `ee/lib/delay.rb`).
        for (n, lo, hi) in [(1, 16, 74), (3, 96, 212), (5, 640, 814)] {
            assert_eq!(delay(n, 0).num_seconds(), lo);
            assert_eq!(delay(n, 29).num_seconds(), hi);
        }
    }

    #[test]
    fn retry_time_is_capped() {
        let now = Utc::now();
        for n in [8, 20, 1000] {
            let t = next_retry_time(now, n, None) - now;
            assert!(t <= Duration::hours(1) + Duration::seconds(74), "{t}");
            assert!(t >= Duration::hours(1) + Duration::seconds(16), "{t}");
        }
        // delay(8) ≈ 1.2 h stays under the 4 h cap; n = 20 is far past it.
        for n in [20, 1000] {
            let t = next_retry_time(now, n, Some(MISSING_ON_PRIMARY_CAP)) - now;
            assert!(
                t >= Duration::hours(4) && t <= Duration::hours(4) + Duration::seconds(74),
                "{t}"
            );
        }
        let t = next_retry_time(now, 1, None) - now;
        assert!(t >= Duration::seconds(16) && t <= Duration::seconds(74));
    }

    #[test]
    fn failure_text_is_cut_to_255_characters() {
        assert_eq!(failure_text(&"é".repeat(300)).chars().count(), 255);
    }
}
