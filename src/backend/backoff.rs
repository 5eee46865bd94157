//! Reconnect delays for PBX connections: exponential backoff with full jitter.
//!
//! Every backend that keeps a long-lived connection (FreeSWITCH ESL, Asterisk AMI) waits
//! `next_delay()` between attempts and calls `reset()` once a connection is established and
//! authenticated. Jitter keeps a fleet of callcode nodes from reconnecting in lockstep after a PBX
//! restart. Pure apart from the random source it is given: no sleeping in here.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt: uniform in `[ceiling / 2, ceiling]`, where the ceiling
    /// doubles with each failed attempt up to `max`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_micros() as u64;
        half + Duration::from_micros(rng.random_range(0..=spread))
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The connection is up again: the next failure starts from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000];
        for ceiling in ceilings {
            let d = b.next_delay(&mut rng).as_millis() as u64;
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d} not in [{}, {ceiling}]",
                ceiling / 2
            );
        }
        assert_eq!(b.attempts(), 7);
        b.reset();
        let d = b.next_delay(&mut rng);
        assert!(d <= Duration::from_millis(100), "{d:?}");
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay(&mut rng)
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
