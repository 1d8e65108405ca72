//! The ack frontier: which delivery tag may be acked with `multiple = true` now.
//!
//! Deliveries on a channel complete out of order (handlers finish when they finish; confirms
//! are pipelined), but an ack with `multiple` covers every lower tag. So it may only go up to
//! the highest tag below which *every* delivery is settled, never past one still in flight.
//! The worker's acker and every `courier-dlq` pass keep exactly this rule, so it lives here
//! once, as pure bookkeeping with no I/O: the callers decide when to send the frame.

use std::collections::BTreeSet;

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Outcome safe: ack.
    Ack,
    /// Outcome not safe (republish unconfirmed): give it back to the queue. The caller sends
    /// that nack itself; the frontier only stops treating the tag as in flight.
    Requeue,
}

/// Which tag may be acked with `multiple` now, given the deliveries seen and settled so far.
#[derive(Debug, Default)]
pub struct Frontier {
    /// Delivered, not yet settled: the lowest of them bounds every ack.
    outstanding: BTreeSet<u64>,
    /// Highest tag delivered: the bound when nothing is outstanding.
    max_delivered: u64,
    /// Settled as [`Settle::Ack`], not yet covered by an ack frame: an ack must name one of
    /// them (a requeued tag is unknown to the broker once nacked, and acking it closes the
    /// channel).
    acks: BTreeSet<u64>,
}

impl Frontier {
    /// Records a delivery (tags arrive in increasing order on one channel).
    pub fn delivered(&mut self, tag: u64) {
        self.outstanding.insert(tag);
        self.max_delivered = self.max_delivered.max(tag);
    }

    /// Records a delivery's outcome. A tag that is not in flight (never delivered, or settled
    /// already) is ignored: counting it could make a later ack name a tag the broker has
    /// already forgotten, which closes the channel.
    pub fn settled(&mut self, tag: u64, how: Settle) {
        if self.outstanding.remove(&tag) && how == Settle::Ack {
            self.acks.insert(tag);
        }
    }

    /// Deliveries not yet settled.
    pub fn unsettled(&self) -> usize {
        self.outstanding.len()
    }

    /// The tag [`Frontier::take_ack`] would return, without taking it.
    pub fn ready(&self) -> Option<u64> {
        self.acks.range(..=self.safe()).next_back().copied()
    }

    /// The tag to ack with `multiple` now, if any: every delivery up to it is settled, and it
    /// is itself an ack-settled delivery not yet covered by an earlier ack (acking a requeued
    /// tag would be an unknown tag to the broker, which closes the channel).
    pub fn take_ack(&mut self) -> Option<u64> {
        let upto = self.ready()?;
        self.acks = self.acks.split_off(&(upto + 1));
        Some(upto)
    }

    /// Ack-settled deliveries a `multiple` ack cannot reach yet, because a lower delivery is
    /// still in flight.
    pub fn stranded(&self) -> usize {
        self.acks.range(self.safe().saturating_add(1)..).count()
    }

    /// Whether any delivery is stranded (see [`Frontier::stranded`]), without counting them.
    pub fn has_stranded(&self) -> bool {
        self.acks
            .range(self.safe().saturating_add(1)..)
            .next()
            .is_some()
    }

    /// Whether at least `n` deliveries are stranded; counts only when there could be that many.
    pub fn stranded_at_least(&self, n: usize) -> bool {
        self.acks.len() >= n && self.stranded() >= n
    }

    /// Takes the stranded deliveries (see [`Frontier::stranded`]) to be acked one by one. One
    /// slow message (or one a `courier-dlq` pass holds on purpose, to give it back in place)
    /// must not hold back the acks of everything delivered after it: those
    /// unacked deliveries count against the prefetch window (the broker stops delivering once
    /// it is full) and would all be redelivered after a crash. Once taken, a tag is never named
    /// by a later ack (naming an acked tag is an unknown tag to the broker, which closes the
    /// channel); a later `multiple` ack covering it is harmless.
    pub fn take_stranded(&mut self) -> Vec<u64> {
        let above = self.acks.split_off(&self.safe().saturating_add(1));
        above.into_iter().collect()
    }

    /// The highest tag below which nothing is in flight.
    fn safe(&self) -> u64 {
        match self.outstanding.first() {
            // Tags start at 1; saturating keeps a hostile 0 from underflowing.
            Some(lowest) => lowest.saturating_sub(1),
            None => self.max_delivered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stranded_acks_are_taken_once_and_never_named_again() {
        let mut f = Frontier::default();
        for t in 1..=5 {
            f.delivered(t);
        }
        f.settled(2, Settle::Ack);
        f.settled(4, Settle::Ack);
        f.settled(5, Settle::Requeue);
        assert_eq!(f.stranded(), 2, "2 and 4 wait behind 1 and 3");
        assert_eq!(f.take_stranded(), vec![2, 4]);
        assert_eq!(f.stranded(), 0);
        f.settled(1, Settle::Ack);
        assert_eq!(f.take_ack(), Some(1), "2 was acked alone: the ack names 1");
        f.settled(3, Settle::Ack);
        assert_eq!(f.take_ack(), Some(3), "the ack names 3, never 4");
        assert_eq!(f.take_ack(), None);
    }

    #[test]
    fn never_acks_past_an_unsettled_delivery() {
        let mut f = Frontier::default();
        for t in 1..=5 {
            f.delivered(t);
        }
        f.settled(2, Settle::Ack);
        f.settled(3, Settle::Ack);
        assert_eq!(f.take_ack(), None, "1 is still in flight");
        f.settled(1, Settle::Ack);
        assert_eq!(f.ready(), Some(3));
        assert_eq!(f.take_ack(), Some(3));
        assert_eq!(f.take_ack(), None);
        assert_eq!(f.ready(), None);
        f.settled(5, Settle::Ack);
        assert_eq!(f.take_ack(), None, "4 is still in flight");
        f.settled(4, Settle::Ack);
        assert_eq!(f.take_ack(), Some(5));
    }

    #[test]
    fn requeued_tags_alone_are_not_acked() {
        let mut f = Frontier::default();
        f.delivered(1);
        f.delivered(2);
        f.settled(1, Settle::Requeue);
        assert_eq!(f.take_ack(), None);
        f.settled(2, Settle::Ack);
        assert_eq!(f.take_ack(), Some(2));
    }

    #[test]
    fn ack_covers_requeued_neighbours_harmlessly() {
        let mut f = Frontier::default();
        for t in 1..=3 {
            f.delivered(t);
        }
        f.settled(1, Settle::Ack);
        f.settled(2, Settle::Requeue);
        f.settled(3, Settle::Ack);
        assert_eq!(f.take_ack(), Some(3));
    }

    #[test]
    fn later_deliveries_do_not_block_settled_prefix() {
        let mut f = Frontier::default();
        f.delivered(1);
        f.settled(1, Settle::Ack);
        f.delivered(2);
        assert_eq!(f.take_ack(), Some(1));
    }

    #[test]
    fn frontier_acks_only_a_settled_prefix() {
        let mut f = Frontier::default();
        for t in 1..=5 {
            f.delivered(t);
        }
        f.settled(2, Settle::Ack);
        f.settled(3, Settle::Ack);
        assert_eq!(f.take_ack(), None, "1 is still in flight");
        f.settled(1, Settle::Ack);
        assert_eq!(f.take_ack(), Some(3));
        assert_eq!(f.take_ack(), None, "nothing new");
        f.settled(5, Settle::Ack);
        assert_eq!(f.take_ack(), None, "4 is still in flight");
        f.settled(4, Settle::Ack);
        assert_eq!(f.unsettled(), 0);
        assert_eq!(f.take_ack(), Some(5));
        f.delivered(6);
        assert_eq!(f.take_ack(), None);
    }

    #[test]
    fn take_stranded_acks_past_a_held_delivery_once() {
        let mut f = Frontier::default();
        for t in 1..=5 {
            f.delivered(t);
        }
        // 2 is held on purpose; 1, 3 and 5 are settled, 4 is still in flight.
        f.settled(1, Settle::Ack);
        f.settled(3, Settle::Ack);
        f.settled(5, Settle::Ack);
        assert_eq!(f.take_ack(), Some(1));
        assert_eq!(f.take_stranded(), vec![3, 5]);
        assert_eq!(f.take_stranded(), Vec::<u64>::new());
        f.settled(4, Settle::Ack);
        assert_eq!(f.take_ack(), None, "2 is still held");
        assert_eq!(f.take_stranded(), vec![4]);
        // 2 settles at last: a multiple ack up to 2 names only tags not acked yet.
        f.settled(2, Settle::Ack);
        assert_eq!(f.take_ack(), Some(2));
        assert_eq!(f.take_ack(), None);
    }

    #[test]
    fn a_tag_not_in_flight_is_ignored() {
        let mut f = Frontier::default();
        f.delivered(1);
        f.delivered(2);
        f.settled(1, Settle::Ack);
        f.settled(2, Settle::Ack);
        assert_eq!(f.take_ack(), Some(2));
        f.settled(1, Settle::Ack);
        f.settled(7, Settle::Ack);
        assert_eq!(
            f.ready(),
            None,
            "an acked or unknown tag is never acked again"
        );
        assert_eq!(f.unsettled(), 0);
    }
}
