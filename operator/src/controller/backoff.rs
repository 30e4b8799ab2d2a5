//! Retries of failed reconciles: exponential per system, with jitter, so a
//! failing API server is not hammered in lockstep, and reset by a success.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Mutex,
    time::Duration,
};

use kube::runtime::reflector::ObjectRef;

use crate::api::IoTSystem;

const FIRST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(300);

/// The wait before retry number `attempt` (1-based): 1 s, 2 s, 4 s, … up to
/// 5 minutes, scaled by `jitter` in [0, 1) to between 75% and 125%.
pub fn retry_delay(attempt: u32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let base = FIRST.saturating_mul(1 << exponent).min(LONGEST);
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Failed attempts per system since its last success.
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<ObjectRef<IoTSystem>, u32>>);

impl Backoff {
    /// Counts a failure and returns how long to wait before trying again.
    pub fn failed(&self, system: &ObjectRef<IoTSystem>) -> Duration {
        let mut attempts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let attempt = attempts.entry(system.clone()).or_insert(0);
        *attempt += 1;
        retry_delay(*attempt, jitter())
    }

    pub fn succeeded(&self, system: &ObjectRef<IoTSystem>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(system);
    }
}

/// A number in [0, 1) that differs between calls and processes.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (RandomState::new().hash_one(nanos) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_five_minutes_within_the_jitter() {
        assert_eq!(retry_delay(1, 0.5), Duration::from_secs(1));
        assert_eq!(retry_delay(2, 0.5), Duration::from_secs(2));
        assert_eq!(retry_delay(4, 0.5), Duration::from_secs(8));
        assert_eq!(retry_delay(30, 0.5), LONGEST);
        assert_eq!(retry_delay(1, 0.0), Duration::from_millis(750));
        assert_eq!(retry_delay(3, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn success_starts_over() {
        let backoff = Backoff::default();
        let s = ObjectRef::new("s").within("ns");
        let first = backoff.failed(&s);
        let second = backoff.failed(&s);
        assert!(second > first, "{first:?} then {second:?}");
        backoff.succeeded(&s);
        assert!(backoff.failed(&s) <= Duration::from_millis(1250));
        let spread: std::collections::HashSet<u128> = (0..20)
            .map(|_| retry_delay(5, jitter()).as_millis())
            .collect();
        assert!(spread.len() > 1, "no jitter");
    }
}
