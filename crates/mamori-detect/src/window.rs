//! The sliding window of flagged queries that turns per-query flags into a client verdict
//! (shared by the Blacklight and k-NN detectors).

use mamori_core::Verdict;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Which of a client's last queries were flagged, and how many.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct FlagWindow {
    recent: VecDeque<bool>,
    flagged: usize,
}

impl FlagWindow {
    /// Heap bytes of its window.
    pub(crate) fn heap_bytes(&self) -> usize {
        crate::heap::deque(&self.recent)
    }

    /// Records one query's flag, keeps the last `window` flags, and alarms when at least
    /// `min_flagged` of them are set (score = flagged / min_flagged).
    pub(crate) fn push(&mut self, flag: bool, window: usize, min_flagged: usize) -> Verdict {
        self.recent.push_back(flag);
        self.flagged += flag as usize;
        while self.recent.len() > window.max(1) {
            if self.recent.pop_front() == Some(true) {
                self.flagged -= 1;
            }
        }
        let need = min_flagged.max(1);
        Verdict {
            score: self.flagged as f64 / need as f64,
            alarm: self.flagged >= need,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_leave_the_window() {
        let mut w = FlagWindow::default();
        assert!(!w.push(true, 3, 2).alarm);
        assert!(w.push(true, 3, 2).alarm);
        w.push(false, 3, 2);
        // The first flag has left the 3-query window.
        let v = w.push(false, 3, 2);
        assert!(!v.alarm);
        assert_eq!(v.score, 0.5);
    }
}
