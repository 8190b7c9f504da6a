//! Which of a shared audit store's block events a replica has applied
//! ([`crate::Chain::sync_blocks`]), without re-reading the whole block table on every sync.
//!
//! Block events are numbered by the store (SQLite's and PostgreSQL's row ids, in commit order
//! for one writer). Several PostgreSQL writers draw their numbers from one sequence when they
//! insert but commit independently, so a replica can read number 12 before number 11 becomes
//! visible: a plain "read after the highest number seen" cursor would miss 11 for good. The
//! cursor therefore keeps two things:
//!
//! - the numbers it applied above a **settled** line, so an event is applied once however
//!   often it is read;
//! - the settled line itself: the highest number seen at a sync at least
//!   [`SETTLE_MS`] ago. A number below it belongs to a transaction that had drawn it before
//!   that sync; the gateway's audit transactions are single batched inserts, so one still
//!   uncommitted minutes later has failed (and its records are spilled and re-inserted under
//!   new, higher numbers). Each sync reads only the events above the settled line.
//!
//! Memory and work per sync are bounded by the events of the last [`SETTLE_MS`], not by the
//! store's history. A restarted replica replays every event once
//! ([`BlockCursor::after`] is `i64::MIN` until the first line settles).

use std::collections::{HashSet, VecDeque};

/// How long a block event's number must have been seen before every lower number is taken
/// to be committed or abandoned (5 minutes).
pub const SETTLE_MS: u64 = 5 * 60 * 1000;

/// The block events a replica has applied; see the module documentation.
#[derive(Debug)]
pub struct BlockCursor {
    /// Every event numbered at or below this was applied (or never will exist).
    settled: i64,
    /// Numbers above `settled` already applied.
    applied: HashSet<i64>,
    /// The highest number applied so far.
    highest: i64,
    /// `(time, highest number)` of past syncs not yet old enough to settle, oldest first.
    marks: VecDeque<(u64, i64)>,
    settle_ms: u64,
}

impl BlockCursor {
    /// An empty cursor whose numbers settle after `settle_ms` ([`SETTLE_MS`] in the gateway).
    pub fn new(settle_ms: u64) -> Self {
        BlockCursor {
            settled: i64::MIN,
            applied: HashSet::new(),
            highest: i64::MIN,
            marks: VecDeque::new(),
            settle_ms,
        }
    }

    /// The number to read above ([`crate::AuditStore::numbered_blocks`]).
    pub fn after(&self) -> i64 {
        self.settled
    }

    /// Records event `id` as applied; `true` the first time (apply it then), `false` when it
    /// was applied before.
    pub fn first_sight(&mut self, id: i64) -> bool {
        if id <= self.settled || !self.applied.insert(id) {
            return false;
        }
        self.highest = self.highest.max(id);
        true
    }

    /// Closes a sync that read the store at `now_ms`: remembers the highest number seen, and
    /// moves the settled line to the highest number seen at a sync at least `settle_ms` ago,
    /// forgetting the applied numbers below it.
    pub fn settle(&mut self, now_ms: u64) {
        if self.highest > self.marks.back().map_or(self.settled, |m| m.1) {
            self.marks.push_back((now_ms, self.highest));
        }
        let mut line = self.settled;
        while let Some(&(t, id)) = self.marks.front() {
            if now_ms.saturating_sub(t) < self.settle_ms {
                break;
            }
            line = line.max(id);
            self.marks.pop_front();
        }
        if line > self.settled {
            self.settled = line;
            self.applied.retain(|&i| i > line);
        }
    }

    /// How many applied numbers the cursor holds above its settled line.
    pub fn pending(&self) -> usize {
        self.applied.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sync `reads` (the numbers a store returns above `after`) at `now`; the numbers applied.
    fn sync(c: &mut BlockCursor, store: &[i64], now: u64) -> Vec<i64> {
        let after = c.after();
        let fresh: Vec<i64> = store
            .iter()
            .copied()
            .filter(|&i| i > after)
            .filter(|&i| c.first_sight(i))
            .collect();
        c.settle(now);
        fresh
    }

    #[test]
    fn each_event_is_applied_once_and_settled_ones_are_not_reread() {
        let mut c = BlockCursor::new(1000);
        assert_eq!(c.after(), i64::MIN);
        assert_eq!(sync(&mut c, &[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(sync(&mut c, &[1, 2, 3], 500), Vec::<i64>::new());
        assert_eq!(c.after(), i64::MIN, "nothing settles inside the window");
        assert_eq!(sync(&mut c, &[1, 2, 3, 4], 999), vec![4]);
        // The read at time 0 saw up to 3: at 1000 everything up to 3 is settled and forgotten.
        assert_eq!(sync(&mut c, &[1, 2, 3, 4], 1000), Vec::<i64>::new());
        assert_eq!(c.after(), 3);
        assert_eq!(c.pending(), 1, "only 4 is still remembered");
        // 4 was first seen at 999 and settles at 1999.
        assert_eq!(sync(&mut c, &[1, 2, 3, 4, 5], 1998), vec![5]);
        assert_eq!(c.after(), 3);
        assert_eq!(sync(&mut c, &[1, 2, 3, 4, 5], 1999), Vec::<i64>::new());
        assert_eq!(c.after(), 4);
        assert_eq!(sync(&mut c, &[1, 2, 3, 4, 5], 5000), Vec::<i64>::new());
        assert_eq!((c.after(), c.pending()), (5, 0));
    }

    /// PostgreSQL writers commit out of number order: 12 is visible before 11. A cursor that
    /// read "above the highest seen" would skip 11; this one applies it when it appears within
    /// the settle window.
    #[test]
    fn a_lower_number_committed_late_is_still_applied() {
        let mut c = BlockCursor::new(1000);
        assert_eq!(sync(&mut c, &[10, 12], 0), vec![10, 12]);
        assert_eq!(sync(&mut c, &[10, 11, 12], 900), vec![11]);
        assert_eq!(sync(&mut c, &[10, 11, 12], 2000), Vec::<i64>::new());
        assert_eq!(c.after(), 12);
    }

    #[test]
    fn the_line_only_moves_forward_and_memory_stays_bounded() {
        let mut c = BlockCursor::new(100);
        let mut store = Vec::new();
        for step in 0..1000i64 {
            store.push(step);
            let fresh = sync(&mut c, &store, step as u64 * 10);
            assert_eq!(fresh, vec![step]);
            assert!(c.pending() <= 11, "step {step}: {} pending", c.pending());
        }
        assert!(c.after() >= 980);
    }
}
