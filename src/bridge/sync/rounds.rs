//! When rounds of the sync exchange with a peer are over: in step, or settled with
//! differences neither side will change.

use std::collections::BTreeSet;

use super::{Difference, Why};

/// What one round showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The peer's summary and this node's match (or the peer had nothing to say to ours).
    InStep,
    /// Something moved: another round.
    Again,
    /// Nothing moved this round and the same keys still differ: the peer keeps its version
    /// (the reference never replaces a value at the same second).
    Stalled(Vec<Difference>),
}

/// The rounds so far.
#[derive(Debug, Default)]
pub struct Rounds {
    /// Keys a delta brought with the very value this node holds: a hash that differs there
    /// comes from the order of an object's keys, which meshd does not keep.
    same_value: BTreeSet<String>,
    previous: Option<Vec<Difference>>,
}

impl Rounds {
    /// Judges a round in which this node answered the peer's summary (`answered_summary`),
    /// finding `differences`, after merging deltas that changed `changed` entries.
    pub fn judge(
        &mut self,
        answered_summary: bool,
        differences: &[Difference],
        same_value: &[String],
        changed: usize,
    ) -> Verdict {
        self.same_value.extend(same_value.iter().cloned());
        let real: Vec<Difference> = differences
            .iter()
            .filter(|d| !(d.why == Why::SameSecond && self.same_value.contains(&d.name)))
            // Nothing the exchange can change: the format has no deletions.
            .filter(|d| d.why != Why::DeletedHere)
            .cloned()
            .collect();
        if answered_summary && real.is_empty() {
            return Verdict::InStep;
        }
        if !answered_summary {
            return Verdict::Again;
        }
        let stalled = changed == 0 && self.previous.as_ref() == Some(&real);
        self.previous = Some(real.clone());
        if stalled {
            Verdict::Stalled(real)
        } else {
            Verdict::Again
        }
    }

    /// Keys whose hashes differ only by key order, seen so far.
    pub fn same_value(&self) -> usize {
        self.same_value.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn differ(name: &str, why: Why) -> Difference {
        Difference {
            name: name.into(),
            why,
        }
    }

    #[test]
    fn matching_summaries_are_in_step() {
        let mut rounds = Rounds::default();
        assert_eq!(rounds.judge(true, &[], &[], 0), Verdict::InStep);
    }

    #[test]
    fn a_hash_that_differs_by_key_order_alone_is_in_step_once_the_value_came() {
        let mut rounds = Rounds::default();
        let d = [differ("mesh:k", Why::SameSecond)];
        assert_eq!(rounds.judge(true, &d, &[], 0), Verdict::Again);
        assert_eq!(
            rounds.judge(true, &d, &["mesh:k".into()], 0),
            Verdict::InStep
        );
    }

    #[test]
    fn a_key_deleted_here_does_not_keep_the_rounds_going() {
        let mut rounds = Rounds::default();
        let d = [differ("mesh:gone", Why::DeletedHere)];
        assert_eq!(rounds.judge(true, &d, &[], 0), Verdict::InStep);
    }

    #[test]
    fn the_same_differences_with_nothing_changed_are_stalled() {
        let mut rounds = Rounds::default();
        let d = [differ("mesh:k", Why::SameSecond)];
        assert_eq!(rounds.judge(true, &d, &[], 1), Verdict::Again);
        assert_eq!(rounds.judge(false, &[], &[], 0), Verdict::Again);
        assert_eq!(rounds.judge(true, &d, &[], 1), Verdict::Again);
        assert_eq!(rounds.judge(true, &d, &[], 0), Verdict::Stalled(d.to_vec()));
    }
}
