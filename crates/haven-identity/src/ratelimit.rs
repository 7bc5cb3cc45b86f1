//! A per-address rate limit for the identity endpoints that do work before anyone is
//! authenticated (starting a login or an authorization request stores a short-lived record;
//! a failed client authentication writes an audit record): at most `per_minute` per client
//! address, in a fixed one-minute window, so a flood cannot fill the database or the audit
//! trail. Memory is bounded: the table is cleared when it reaches its size limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct RateLimit {
    per_minute: u32,
    max_entries: usize,
    table: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimit {
    #[must_use]
    pub fn new(per_minute: u32, max_entries: usize) -> Self {
        Self {
            per_minute,
            max_entries,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Whether one more request from `address` fits in its minute. Requests without an
    /// address (the command line) always do.
    pub fn allow(&self, address: Option<&str>) -> bool {
        let Some(address) = address else {
            return true;
        };
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.len() >= self.max_entries && !table.contains_key(address) {
            table.retain(|_, (start, _)| start.elapsed().as_secs() < 60);
            if table.len() >= self.max_entries {
                table.clear();
            }
        }
        let entry = table
            .entry(address.to_owned())
            .or_insert((Instant::now(), 0));
        if entry.0.elapsed().as_secs() >= 60 {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn an_address_gets_its_budget_and_no_more() {
        let r = RateLimit::new(3, 10);
        assert!(r.allow(Some("10.0.0.1")));
        assert!(r.allow(Some("10.0.0.1")));
        assert!(r.allow(Some("10.0.0.1")));
        assert!(!r.allow(Some("10.0.0.1")));
        assert!(
            r.allow(Some("10.0.0.2")),
            "another address has its own budget"
        );
        assert!(r.allow(None), "the command line is not limited");
    }

    #[test]
    fn the_table_stays_bounded() {
        let r = RateLimit::new(1, 100);
        for i in 0..1000 {
            r.allow(Some(&format!("10.0.{}.{}", i / 250, i % 250)));
        }
        assert!(r.table.lock().unwrap().len() <= 100);
    }
}
