//! Brute-force throttling: how long a failed login makes the next attempt wait.
//!
//! [`Throttle`] is the state of one account or one client address: consecutive failures and
//! the instants before which no attempt is allowed. It is pure (time is passed in as Unix
//! seconds), so the per-account state can be persisted as JSON by the caller and the
//! per-address state kept in memory by [`IpThrottle`].
//!
//! The schedule ([`ThrottlePolicy`]):
//!
//! - The first `free_attempts` consecutive failures cost nothing (typos happen).
//! - Each failure after those makes the next attempt wait `base_delay_secs`, doubling per
//!   failure up to `max_delay_secs`.
//! - Every `lock_after`-th consecutive failure (10th, 20th, 30th, …) locks for `lock_secs`,
//!   doubling per lock (15 min, 30 min, 1 h, … with the defaults) up to [`MAX_LOCK_SECS`].
//!   The counter is not reset when a lock ends, so an attacker who waits out a lock gets
//!   `max_delay_secs` between guesses and a longer lock next time; only a success resets it.
//!
//! `lock_after` is at most [`MAX_LOCK_AFTER`] (100), so no more than 100 consecutive failures
//! ever happen without a lock (NIST SP 800-63B §5.2.2). A policy that was not validated is
//! clamped to that range rather than trusted.
//!
//! A lock on an account can be triggered by anyone who knows the username; that is the price
//! of §5.2.2. The per-address throttle in front of it slows one source down before it can
//! lock many accounts, and an account's owner can always be helped by an administrator.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

/// The most consecutive failures before a lock (NIST SP 800-63B §5.2.2).
pub const MAX_LOCK_AFTER: u32 = 100;
/// No lock and no delay lasts longer than a day, however often locks repeat; longer
/// configured values are clamped to it.
pub const MAX_LOCK_SECS: u64 = 24 * 3600;
/// A sensible bound for [`IpThrottle`]: about 100 bytes per entry, so ~10 MB at most.
pub const DEFAULT_IP_CAPACITY: usize = 100_000;
/// An address with no restriction running and no failure for this long is forgotten; the
/// same horizon as the per-account records the login flow keeps.
pub const IP_FORGET_SECS: u64 = 24 * 3600;
/// Unparseable client addresses are keyed by at most this many bytes of their text.
const MAX_OTHER_KEY_BYTES: usize = 64;

/// How failures turn into waits; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottlePolicy {
    /// Consecutive failures that cost nothing. Default 3.
    pub free_attempts: u32,
    /// The wait after the first failure beyond the free ones. Default 1 s.
    pub base_delay_secs: u64,
    /// The longest wait between attempts outside a lock. Default 60 s; at most a day.
    pub max_delay_secs: u64,
    /// Every this many consecutive failures lock. Default 10; 1 to [`MAX_LOCK_AFTER`].
    pub lock_after: u32,
    /// The first lock's length; later ones double. Default 900 s; at most a day.
    pub lock_secs: u64,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            free_attempts: 3,
            base_delay_secs: 1,
            max_delay_secs: 60,
            lock_after: 10,
            lock_secs: 900,
        }
    }
}

/// Why a configured throttle policy is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottlePolicyError {
    #[error("lock_after must be between 1 and {MAX_LOCK_AFTER} (NIST SP 800-63B 5.2.2), not {0}")]
    LockAfter(u32),
    #[error("free_attempts ({free}) must not exceed lock_after ({lock_after})")]
    FreeAttempts { free: u32, lock_after: u32 },
    #[error(
        "base_delay_secs must be at least 1, and max_delay_secs between it and {MAX_LOCK_SECS}"
    )]
    Delays,
    #[error("lock_secs must be between 1 and {MAX_LOCK_SECS}")]
    LockSecs,
}

impl ThrottlePolicy {
    /// Checks a configured policy at start-up.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), ThrottlePolicyError> {
        if !(1..=MAX_LOCK_AFTER).contains(&self.lock_after) {
            return Err(ThrottlePolicyError::LockAfter(self.lock_after));
        }
        if self.free_attempts > self.lock_after {
            return Err(ThrottlePolicyError::FreeAttempts {
                free: self.free_attempts,
                lock_after: self.lock_after,
            });
        }
        if self.base_delay_secs == 0
            || self.base_delay_secs > self.max_delay_secs
            || self.max_delay_secs > MAX_LOCK_SECS
        {
            return Err(ThrottlePolicyError::Delays);
        }
        if !(1..=MAX_LOCK_SECS).contains(&self.lock_secs) {
            return Err(ThrottlePolicyError::LockSecs);
        }
        Ok(())
    }

    /// `lock_after` as used: clamped to 1..=[`MAX_LOCK_AFTER`].
    fn lock_every(&self) -> u32 {
        self.lock_after.clamp(1, MAX_LOCK_AFTER)
    }

    /// The wait before the next attempt after `failures` consecutive failures, locks aside.
    #[must_use]
    pub fn delay_after(&self, failures: u32) -> u64 {
        let Some(beyond) = failures.checked_sub(self.free_attempts).filter(|b| *b > 0) else {
            return 0;
        };
        let factor = 1u64.checked_shl(beyond - 1).unwrap_or(u64::MAX);
        self.base_delay_secs
            .saturating_mul(factor)
            .min(self.max_delay_secs.min(MAX_LOCK_SECS))
    }

    /// The lock that the `failures`-th consecutive failure starts, if it starts one.
    #[must_use]
    pub fn lock_after_failure(&self, failures: u32) -> Option<u64> {
        let every = self.lock_every();
        if failures == 0 || !failures.is_multiple_of(every) {
            return None;
        }
        let nth = failures / every; // 1 for the first lock
        let factor = 1u64.checked_shl(nth - 1).unwrap_or(u64::MAX);
        let first = self.lock_secs.clamp(1, MAX_LOCK_SECS);
        Some(first.saturating_mul(factor).min(MAX_LOCK_SECS))
    }

    /// The longest wait this policy imposes after `failures` consecutive failures: the
    /// current delay or the last lock. [`Throttle::check`] reports no more than this, so a
    /// state stored under a stricter configuration does not outlive it.
    fn longest_wait(&self, failures: u32) -> u64 {
        let every = self.lock_every();
        let last_lock = self
            .lock_after_failure(failures - failures % every)
            .unwrap_or(0);
        self.delay_after(failures).max(last_lock).max(1)
    }
}

/// "Not yet": the attempt is refused; retry after this many seconds (at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many failed attempts; retry after {0} s")]
pub struct RetryAfter(pub u64);

/// The throttling state of one account or address. All instants are Unix seconds; 0 means
/// "no restriction".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// No attempt before this instant (the growing delay).
    pub next_allowed: u64,
    /// Locked until this instant.
    pub locked_until: u64,
}

impl Throttle {
    /// Whether an attempt may be made at `now`.
    ///
    /// # Errors
    /// [`RetryAfter`] while a delay or a lock runs.
    pub fn check(&self, policy: &ThrottlePolicy, now: u64) -> Result<(), RetryAfter> {
        let until = self.next_allowed.max(self.locked_until);
        if now >= until {
            Ok(())
        } else {
            Err(RetryAfter(
                (until - now).min(policy.longest_wait(self.failures)).max(1),
            ))
        }
    }

    #[must_use]
    pub fn is_locked(&self, now: u64) -> bool {
        now < self.locked_until
    }

    /// Counts a failed attempt at `now`. A running delay or lock is never shortened.
    pub fn record_failure(&mut self, policy: &ThrottlePolicy, now: u64) {
        self.failures = self.failures.saturating_add(1);
        let next = now.saturating_add(policy.delay_after(self.failures));
        self.next_allowed = self.next_allowed.max(next);
        if let Some(lock) = policy.lock_after_failure(self.failures) {
            self.locked_until = self.locked_until.max(now.saturating_add(lock));
        }
    }

    /// A successful attempt: everything is forgotten.
    pub fn record_success(&mut self) {
        *self = Self::default();
    }
}

/// Which bucket a client address counts in. An IPv6 client usually holds a whole /64, so
/// that is the unit; IPv4-mapped IPv6 addresses count as the IPv4 address.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum IpKey {
    V4(Ipv4Addr),
    V6Net(u64),
    /// Not an address (a proxy sent something else): its text, truncated.
    Other(Box<str>),
}

impl IpKey {
    fn new(ip: &str) -> Self {
        let ip = ip.trim();
        let parsed = ip
            .parse::<IpAddr>()
            .or_else(|_| ip.parse::<SocketAddr>().map(|s| s.ip()));
        match parsed {
            Ok(IpAddr::V4(v4)) => IpKey::V4(v4),
            Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4),
                None => IpKey::V6Net(u64::try_from(u128::from(v6) >> 64).unwrap_or(u64::MAX)),
            },
            Err(_) => {
                let mut end = ip.len().min(MAX_OTHER_KEY_BYTES);
                while !ip.is_char_boundary(end) {
                    end -= 1;
                }
                IpKey::Other(ip[..end].into())
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    throttle: Throttle,
    last_failure: u64,
}

impl Entry {
    fn restricting(&self, now: u64) -> bool {
        now < self.throttle.next_allowed.max(self.throttle.locked_until)
    }

    fn is_stale(&self, now: u64) -> bool {
        !self.restricting(now) && now >= self.last_failure.saturating_add(IP_FORGET_SECS)
    }
}

/// Per-address throttling, in memory (each replica keeps its own; the per-account state in
/// the database is the one that holds across replicas).
///
/// The map is bounded: when a new address arrives and the map is full, addresses idle for
/// [`IP_FORGET_SECS`] are dropped, and if that is not enough, the least recently failing
/// tenth — addresses under no delay or lock first — so a flood of addresses costs at most
/// `capacity` entries and evicts the flood's own entries before a locked attacker's.
///
/// A success from an address resets it, so that one colleague's typos behind a hospital's NAT
/// do not keep delaying everyone. Someone holding a valid account could reset their address
/// that way between guesses; the per-account throttle is what stops guessing at one account.
pub struct IpThrottle {
    policy: ThrottlePolicy,
    capacity: usize,
    entries: Mutex<HashMap<IpKey, Entry>>,
}

impl fmt::Debug for IpThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpThrottle")
            .field("policy", &self.policy)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl IpThrottle {
    /// An empty throttle holding at most `capacity` addresses (at least 1).
    #[must_use]
    pub fn new(policy: ThrottlePolicy, capacity: usize) -> Self {
        Self {
            policy,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The state is counters only, so one that a panicking thread left behind is still usable.
    fn entries(&self) -> MutexGuard<'_, HashMap<IpKey, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `ip` may attempt a login at `now`. Never adds an entry.
    ///
    /// # Errors
    /// [`RetryAfter`] while the address is delayed or locked.
    pub fn check(&self, ip: &str, now: u64) -> Result<(), RetryAfter> {
        match self.entries().get(&IpKey::new(ip)) {
            Some(entry) if !entry.is_stale(now) => entry.throttle.check(&self.policy, now),
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt from `ip` at `now`.
    pub fn record_failure(&self, ip: &str, now: u64) {
        let key = IpKey::new(ip);
        let mut entries = self.entries();
        if !entries.contains_key(&key) && entries.len() >= self.capacity {
            self.make_room(&mut entries, now);
        }
        let entry = entries.entry(key).or_insert(Entry {
            throttle: Throttle::default(),
            last_failure: now,
        });
        if entry.is_stale(now) {
            entry.throttle = Throttle::default();
        }
        entry.throttle.record_failure(&self.policy, now);
        entry.last_failure = now;
    }

    /// A successful login from `ip`: the address is forgotten.
    pub fn record_success(&self, ip: &str) {
        self.entries().remove(&IpKey::new(ip));
    }

    /// How many addresses are tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frees at least one slot. Evicting a tenth at a time keeps a flood's cost per failure
    /// amortized O(1) instead of a full scan for every new address.
    fn make_room(&self, entries: &mut HashMap<IpKey, Entry>, now: u64) {
        entries.retain(|_, e| !e.is_stale(now));
        if entries.len() < self.capacity {
            return;
        }
        let mut order: Vec<(bool, u64, IpKey)> = entries
            .iter()
            .map(|(k, e)| (e.restricting(now), e.last_failure, k.clone()))
            .collect();
        let evict = (entries.len() + 1 - self.capacity)
            .max(self.capacity / 10)
            .clamp(1, order.len());
        order.select_nth_unstable_by_key(evict - 1, |(restricting, last, _)| (*restricting, *last));
        for (_, _, key) in &order[..evict] {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    /// Fails `n` times, each time as soon as allowed; returns the time after the last failure.
    fn fail_n(th: &mut Throttle, policy: &ThrottlePolicy, mut now: u64, n: u32) -> u64 {
        for _ in 0..n {
            if let Err(RetryAfter(wait)) = th.check(policy, now) {
                now += wait;
            }
            assert_eq!(th.check(policy, now), Ok(()));
            th.record_failure(policy, now);
        }
        now
    }

    #[test]
    fn delays_double_after_the_free_attempts_up_to_the_maximum() {
        let policy = ThrottlePolicy {
            lock_after: 20,
            ..ThrottlePolicy::default()
        };
        let mut th = Throttle::default();
        let mut waits = Vec::new();
        let mut now = T0;
        for _ in 0..12 {
            th.record_failure(&policy, now);
            match th.check(&policy, now) {
                Ok(()) => waits.push(0),
                Err(RetryAfter(w)) => {
                    waits.push(w);
                    now += w;
                }
            }
        }
        assert_eq!(waits, [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(th.failures, 12);
        assert!(!th.is_locked(now));
    }

    #[test]
    fn the_lock_comes_at_exactly_lock_after() {
        let policy = ThrottlePolicy::default();
        let mut th = Throttle::default();
        let now = fail_n(&mut th, &policy, T0, 9);
        assert!(!th.is_locked(now));
        assert_eq!(th.check(&policy, now), Err(RetryAfter(32)));
        let now = now + 32;
        th.record_failure(&policy, now);
        assert_eq!(th.failures, 10);
        assert!(th.is_locked(now));
        assert_eq!(th.check(&policy, now), Err(RetryAfter(900)));
        assert_eq!(th.locked_until, now + 900);
    }

    #[test]
    fn locks_expire_and_repeat_longer_while_failures_go_on() {
        let policy = ThrottlePolicy::default();
        let mut th = Throttle::default();
        let mut now = fail_n(&mut th, &policy, T0, 10);
        let mut locks = Vec::new();
        for round in 0..9 {
            let until = th.locked_until;
            locks.push(until - now);
            assert_eq!(th.check(&policy, until - 1), Err(RetryAfter(1)));
            assert_eq!(th.check(&policy, until), Ok(()), "round {round}");
            // The counter goes on: the next failure waits the maximum, it does not start over.
            th.record_failure(&policy, until);
            assert_eq!(th.check(&policy, until), Err(RetryAfter(60)));
            now = fail_n(&mut th, &policy, until, 9);
            assert!(th.is_locked(now));
        }
        assert_eq!(th.failures, 100);
        assert_eq!(
            locks,
            [
                900, 1800, 3600, 7200, 14_400, 28_800, 57_600, 86_400, 86_400
            ]
        );
    }

    #[test]
    fn success_resets_everything() {
        let policy = ThrottlePolicy::default();
        let mut th = Throttle::default();
        let now = fail_n(&mut th, &policy, T0, 10);
        assert!(th.is_locked(now));
        th.record_success();
        assert_eq!(th, Throttle::default());
        assert_eq!(th.check(&policy, now), Ok(()));
        // Free attempts again.
        let now = fail_n(&mut th, &policy, now, 3);
        assert_eq!(th.check(&policy, now), Ok(()));
    }

    #[test]
    fn never_more_than_100_failures_without_a_lock() {
        let mut policies = Vec::new();
        for lock_after in [0, 1, 2, 3, 7, 10, 50, 99, 100, 101, 1000, u32::MAX] {
            for free_attempts in [0, 1, 3, lock_after / 2, lock_after, u32::MAX] {
                for (base, max) in [(0, 0), (1, 60), (5, 5), (60, 1), (1, u64::MAX)] {
                    for lock_secs in [0, 1, 900, u64::MAX] {
                        policies.push(ThrottlePolicy {
                            free_attempts,
                            base_delay_secs: base,
                            max_delay_secs: max,
                            lock_after,
                            lock_secs,
                        });
                    }
                }
            }
        }
        for policy in policies {
            let expected = policy.lock_after.clamp(1, MAX_LOCK_AFTER);
            let mut th = Throttle::default();
            let mut now = T0;
            let mut failures = 0;
            // An attacker who retries the moment it is allowed.
            while !th.is_locked(now) {
                match th.check(&policy, now) {
                    Ok(()) => {
                        th.record_failure(&policy, now);
                        failures += 1;
                    }
                    Err(RetryAfter(wait)) => {
                        assert!(
                            (1..=policy.longest_wait(th.failures)).contains(&wait),
                            "{policy:?}"
                        );
                        now += wait;
                    }
                }
                assert!(failures <= MAX_LOCK_AFTER, "{policy:?}");
            }
            assert_eq!(failures, expected, "{policy:?}");
        }
    }

    #[test]
    fn a_failure_never_shortens_a_running_restriction() {
        let policy = ThrottlePolicy::default();
        let mut th = Throttle::default();
        let now = fail_n(&mut th, &policy, T0, 10);
        let until = th.locked_until;
        // A caller that records without checking first (e.g. a second factor) during the lock.
        th.record_failure(&policy, now + 1);
        assert_eq!(th.locked_until, until);
        assert_eq!(th.failures, 11);
    }

    #[test]
    fn a_relaxed_policy_cuts_stored_waits() {
        let strict = ThrottlePolicy {
            lock_secs: MAX_LOCK_SECS,
            ..ThrottlePolicy::default()
        };
        let mut th = Throttle::default();
        let now = fail_n(&mut th, &strict, T0, 10);
        assert_eq!(th.check(&strict, now), Err(RetryAfter(MAX_LOCK_SECS)));
        assert_eq!(
            th.check(&ThrottlePolicy::default(), now),
            Err(RetryAfter(900))
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut th = Throttle::default();
        fail_n(&mut th, &ThrottlePolicy::default(), T0, 5);
        let json = serde_json::to_string(&th).unwrap();
        assert!(json.contains("\"failures\":5"), "{json}");
        let back: Throttle = serde_json::from_str(&json).unwrap();
        assert_eq!(back, th);
        let policy: ThrottlePolicy = serde_json::from_str(r#"{"lock_after": 5}"#).unwrap();
        assert_eq!(policy.free_attempts, 3);
        assert!(serde_json::from_str::<ThrottlePolicy>(r#"{"lock_afterr": 5}"#).is_err());
    }

    #[test]
    fn policies_are_validated() {
        assert_eq!(ThrottlePolicy::default().validate(), Ok(()));
        let with = |f: fn(&mut ThrottlePolicy)| {
            let mut p = ThrottlePolicy::default();
            f(&mut p);
            p.validate()
        };
        assert_eq!(
            with(|p| p.lock_after = 0),
            Err(ThrottlePolicyError::LockAfter(0))
        );
        assert_eq!(
            with(|p| p.lock_after = 101),
            Err(ThrottlePolicyError::LockAfter(101))
        );
        assert_eq!(with(|p| p.lock_after = 100), Ok(()));
        assert!(matches!(
            with(|p| p.free_attempts = 11),
            Err(ThrottlePolicyError::FreeAttempts { .. })
        ));
        assert_eq!(
            with(|p| p.base_delay_secs = 0),
            Err(ThrottlePolicyError::Delays)
        );
        assert_eq!(
            with(|p| p.max_delay_secs = 0),
            Err(ThrottlePolicyError::Delays)
        );
        assert_eq!(
            with(|p| p.lock_secs = 0),
            Err(ThrottlePolicyError::LockSecs)
        );
        assert_eq!(
            with(|p| p.lock_secs = MAX_LOCK_SECS + 1),
            Err(ThrottlePolicyError::LockSecs)
        );
    }

    #[test]
    fn addresses_are_throttled_separately_and_reset_by_success() {
        let ips = IpThrottle::new(ThrottlePolicy::default(), 100);
        for _ in 0..4 {
            ips.record_failure("192.0.2.1", T0);
        }
        assert_eq!(ips.check("192.0.2.1", T0), Err(RetryAfter(1)));
        assert_eq!(ips.check("192.0.2.2", T0), Ok(()));
        assert_eq!(ips.check("192.0.2.1", T0 + 1), Ok(()));
        ips.record_success("192.0.2.1");
        assert_eq!(ips.check("192.0.2.1", T0), Ok(()));
        assert!(ips.is_empty());
    }

    #[test]
    fn address_forms_share_a_bucket() {
        let ips = IpThrottle::new(ThrottlePolicy::default(), 100);
        // One IPv6 /64, written four ways.
        for ip in [
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff::9",
            "[2001:db8:1:2::7]:443",
            " 2001:DB8:1:2::1 ",
        ] {
            ips.record_failure(ip, T0);
        }
        assert_eq!(ips.len(), 1);
        assert_eq!(ips.check("2001:db8:1:2::abcd", T0), Err(RetryAfter(1)));
        assert_eq!(ips.check("2001:db8:1:3::1", T0), Ok(()), "another /64");
        // IPv4, mapped or with a port.
        for ip in [
            "198.51.100.7",
            "::ffff:198.51.100.7",
            "198.51.100.7:50000",
            "[::ffff:198.51.100.7]:1",
        ] {
            ips.record_failure(ip, T0);
        }
        assert_eq!(ips.len(), 2);
        assert_eq!(ips.check("198.51.100.7", T0), Err(RetryAfter(1)));
        // Not an address: keyed by a bounded prefix of the text.
        let junk = "x".repeat(10_000);
        ips.record_failure(&junk, T0);
        ips.record_failure(&format!("{junk}y"), T0);
        assert_eq!(ips.len(), 3);
        ips.record_failure(
            "ünknown-ünknown-ünknown-ünknown-ünknown-ünknown-ünknown",
            T0,
        );
        assert_eq!(ips.len(), 4);
    }

    #[test]
    fn the_address_map_is_bounded_and_keeps_locked_attackers() {
        let policy = ThrottlePolicy::default();
        let ips = IpThrottle::new(policy, 100);
        let mut now = T0;
        for _ in 0..10 {
            ips.record_failure("203.0.113.66", now);
            now += 1;
        }
        assert!(ips.check("203.0.113.66", now).is_err());
        for i in 0..20_000u32 {
            let ip = Ipv4Addr::from(0x0A00_0000 + i).to_string();
            ips.record_failure(&ip, now);
            assert!(ips.len() <= 100);
            if i % 1000 == 0 {
                now += 1;
            }
        }
        assert_eq!(ips.check("203.0.113.66", now), Err(RetryAfter(909 - 30)));
        // The flood's most recent addresses are still throttled.
        assert_eq!(
            ips.entries()
                .get(&IpKey::new("10.0.78.31"))
                .map(|e| e.throttle.failures),
            Some(1)
        );
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let ips = IpThrottle::new(ThrottlePolicy::default(), 2);
        for _ in 0..5 {
            ips.record_failure("192.0.2.1", T0);
        }
        ips.record_failure("192.0.2.2", T0);
        let later = T0 + IP_FORGET_SECS;
        assert_eq!(ips.check("192.0.2.1", later), Ok(()));
        // A new address finds room by dropping both idle ones.
        ips.record_failure("192.0.2.3", later);
        assert_eq!(ips.len(), 1);
        // And an idle address starts over rather than where it left off.
        let ips = IpThrottle::new(ThrottlePolicy::default(), 10);
        for _ in 0..5 {
            ips.record_failure("192.0.2.1", T0);
        }
        ips.record_failure("192.0.2.1", later);
        assert_eq!(ips.check("192.0.2.1", later), Ok(()));
    }
}
