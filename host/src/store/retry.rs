//! Bounded retries with exponential backoff and full jitter.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Give up once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            max_elapsed: Duration::from_secs(120),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(15),
        }
    }
}

/// The retry state of one operation.
pub struct Attempts<'a> {
    policy: &'a RetryPolicy,
    started: Instant,
    pub made: u32,
}

impl<'a> Attempts<'a> {
    pub fn new(policy: &'a RetryPolicy) -> Self {
        Attempts {
            policy,
            started: Instant::now(),
            made: 0,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records a failed attempt and sleeps before the next one; false when the budget is spent.
    pub fn backoff(&mut self) -> bool {
        self.made += 1;
        if self.made >= self.policy.max_attempts {
            return false;
        }
        let exp = self
            .policy
            .base_delay
            .saturating_mul(1u32 << self.made.min(16))
            .min(self.policy.max_delay);
        let delay = exp.mul_f64(jitter());
        if self.started.elapsed() + delay > self.policy.max_elapsed {
            return false;
        }
        std::thread::sleep(delay);
        true
    }
}

/// What one attempt of a retried operation came to.
pub enum Step<T, E> {
    Done(T),
    /// Final: not worth another attempt.
    Fail(E),
    /// Transient (the reason is logged and kept); try again after a backoff.
    Retry(String),
    /// Try again at once, without counting an attempt (e.g. after re-authenticating).
    Again,
}

impl Attempts<'_> {
    /// The one retry loop: runs `attempt` until it is done or fails, backing off after each
    /// transient failure; once the budget is spent, `give_up` turns the attempts made, the
    /// time spent and the last reason into the error.
    pub fn run<T, E>(
        &mut self,
        what: &str,
        mut attempt: impl FnMut(&mut Self) -> Step<T, E>,
        give_up: impl FnOnce(u32, Duration, String) -> E,
    ) -> Result<T, E> {
        loop {
            match attempt(self) {
                Step::Done(t) => return Ok(t),
                Step::Fail(e) => return Err(e),
                Step::Again => {}
                Step::Retry(last) => {
                    tracing::info!(%what, error = %last, attempt = self.made + 1, "failed; retrying");
                    if !self.backoff() {
                        return Err(give_up(self.made, self.elapsed(), last));
                    }
                }
            }
        }
    }
}

/// A uniform factor in [0.5, 1.0): enough spread that retrying clients do not stampede.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if crate::crypto::fill_random(&mut b).is_err() {
        return 0.75;
    }
    0.5 + f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_attempts_and_time() {
        let p = RetryPolicy {
            max_attempts: 3,
            max_elapsed: Duration::from_secs(10),
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut a = Attempts::new(&p);
        assert!(a.backoff());
        assert!(a.backoff());
        assert!(!a.backoff());
        let p = RetryPolicy {
            max_attempts: 100,
            max_elapsed: Duration::from_millis(30),
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(20),
        };
        let mut a = Attempts::new(&p);
        let mut n = 0;
        while a.backoff() {
            n += 1;
        }
        assert!(n <= 3, "stopped by time after {n}");
    }

    #[test]
    fn run_retries_transient_failures_only() {
        let p = RetryPolicy {
            max_attempts: 3,
            max_elapsed: Duration::from_secs(10),
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        };
        let give_up = |made: u32, _: Duration, last: String| format!("{made}: {last}");
        let mut calls = 0;
        let r: Result<u32, String> = Attempts::new(&p).run(
            "op",
            |_| {
                calls += 1;
                match calls {
                    1 => Step::Again,
                    2 => Step::Retry("503".into()),
                    _ => Step::Done(7),
                }
            },
            give_up,
        );
        assert_eq!((r, calls), (Ok(7), 3));
        let r: Result<u32, String> =
            Attempts::new(&p).run("op", |_| Step::Retry("503".into()), give_up);
        assert_eq!(r, Err("3: 503".into()));
        let r: Result<u32, String> =
            Attempts::new(&p).run("op", |_| Step::Fail("404".into()), give_up);
        assert_eq!(r, Err("404".into()));
    }
}
