//! Retry timing: exponential backoff with jitter, capped, within a maximum queue lifetime
//! (defaults as Postfix: 300 s first, 4000 s cap, 5 days).

use super::config::RetryConfig;

/// A small, fast random source (xorshift64*), seeded from the OS. Only for jitter and relay
/// choice, never for anything secret.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the OS (time as a fallback).
    pub fn new() -> Jitter {
        let mut b = [0u8; 8];
        if getrandom::fill(&mut b).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            b = (t.as_nanos() as u64).to_le_bytes();
        }
        Jitter(u64::from_le_bytes(b) | 1)
    }

    /// A uniform f64 in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.unit() * n as f64) as u64).min(n.saturating_sub(1))
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::new()
    }
}

/// The delay in seconds before the retry that follows failed attempt number `attempts`
/// (1 = after the first): `first * 2^(attempts-1)`, at most `max`, spread by ±`jitter`.
pub fn backoff_secs(policy: &RetryConfig, attempts: u32, rng: &mut Jitter) -> u64 {
    let exp = attempts.saturating_sub(1).min(30);
    let base = policy
        .first_secs
        .saturating_mul(1u64 << exp)
        .min(policy.max_secs.max(policy.first_secs));
    if base == 0 || policy.jitter == 0.0 {
        return base;
    }
    let f = 1.0 + policy.jitter * (2.0 * rng.unit() - 1.0);
    ((base as f64 * f).round() as u64).min(policy.max_secs.max(policy.first_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let p = RetryConfig {
            jitter: 0.0,
            ..RetryConfig::default()
        };
        let mut r = Jitter::new();
        let d: Vec<u64> = (1..=6).map(|a| backoff_secs(&p, a, &mut r)).collect();
        assert_eq!(d, [300, 600, 1200, 2400, 4000, 4000]);
        let p = RetryConfig::default();
        for a in 1..50 {
            let s = backoff_secs(&p, a, &mut r);
            assert!((240..=4000).contains(&s), "{s}");
        }
    }
}
