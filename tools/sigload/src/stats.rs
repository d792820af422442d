//! Delivery accounting: per sender→receiver sequence tracking (loss,
//! duplicates, reordering) and latency histograms.
//!
//! Every load message carries, for each receiver it is meant for, a
//! sequence number that is dense per (sender, receiver) pair: 1, 2, 3, …
//! The sender remembers how many it wrote to each receiver; each receiver
//! keeps a bitmap of the numbers it saw from each sender. At the end,
//! `lost = sent − unique received` per pair, a number seen twice is a
//! duplicate, and a number below the highest seen so far is a reordering
//! (protocol.md promises per-sender order to each recipient).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest sequence number accepted (guards the bitmap against a garbled
/// number asking for gigabytes).
pub const MAX_SEQ: u64 = 1 << 32;

/// What happened to one received sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time seen, in order.
    New,
    /// First time seen, but a higher number from the same sender came first.
    NewReordered,
    /// Seen before.
    Duplicate,
    /// Zero or absurdly large: not something this tool sent.
    Invalid,
}

/// The receiving side of one sender→receiver pair.
#[derive(Debug, Default, Clone)]
pub struct PairRecv {
    bits: Vec<u64>,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub invalid: u64,
    pub max_seen: u64,
}

impl PairRecv {
    pub fn record(&mut self, seq: u64) -> Seen {
        if seq == 0 || seq > MAX_SEQ {
            self.invalid += 1;
            return Seen::Invalid;
        }
        let i = (seq - 1) as usize;
        let (word, bit) = (i / 64, i % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.bits[word] |= mask;
        self.unique += 1;
        if seq < self.max_seen {
            self.reordered += 1;
            Seen::NewReordered
        } else {
            self.max_seen = seq;
            Seen::New
        }
    }
}

/// Loss/duplicate totals over all pairs.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Deliveries the senders asked for (sum over pairs of messages written).
    pub expected: u64,
    /// Distinct (pair, seq) deliveries received.
    pub delivered: u64,
    /// Expected but never received.
    pub lost: u64,
    /// Received more than once (extra copies).
    pub duplicated: u64,
    /// Received after a higher number from the same sender.
    pub reordered: u64,
    /// Received with a number the sender never wrote to this receiver, or
    /// an invalid one (should be 0: the server invented or misrouted it).
    pub phantom: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.phantom += o.phantom;
    }
}

/// Combines what senders wrote (`sent[s][r]`: messages sender `s` wrote to
/// receiver `r`) and what receivers saw (`recv[r][s]`) into totals. Both are
/// indexed by the same participant numbering; missing rows count as zero.
pub fn tally(sent: &[Vec<u64>], recv: &[Vec<PairRecv>]) -> Tally {
    let mut t = Tally::default();
    let widest = sent
        .iter()
        .map(Vec::len)
        .chain(recv.iter().map(Vec::len))
        .max()
        .unwrap_or(0);
    let n = sent.len().max(recv.len()).max(widest);
    let empty = PairRecv::default();
    for s in 0..n {
        for r in 0..n {
            let wrote = sent.get(s).and_then(|row| row.get(r)).copied().unwrap_or(0);
            let got = recv.get(r).and_then(|row| row.get(s)).unwrap_or(&empty);
            // Numbers above what was written are phantoms, not deliveries.
            let counted = if got.max_seen > wrote {
                got.count_upto(wrote)
            } else {
                got.unique
            };
            t.expected += wrote;
            t.delivered += counted;
            t.lost += wrote - counted;
            t.duplicated += got.duplicates;
            t.reordered += got.reordered;
            t.phantom += (got.unique - counted) + got.invalid;
        }
    }
    t
}

impl PairRecv {
    /// Distinct numbers seen in 1..=upto.
    pub fn count_upto(&self, upto: u64) -> u64 {
        let upto = upto.min(self.bits.len() as u64 * 64) as usize;
        let full = upto / 64;
        let mut n: u64 = self.bits[..full]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = upto % 64;
        if rest > 0 {
            n += u64::from((self.bits[full] & ((1u64 << rest) - 1)).count_ones());
        }
        n
    }
}

/// A latency histogram in microseconds (1 µs .. 10 min, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

pub fn summarize(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        mean_us: (h.mean() * 10.0).round() / 10.0,
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_all_new() {
        let mut p = PairRecv::default();
        for s in 1..=200 {
            assert_eq!(p.record(s), Seen::New);
        }
        assert_eq!(
            (p.unique, p.duplicates, p.reordered, p.max_seen),
            (200, 0, 0, 200)
        );
        assert_eq!(p.count_upto(200), 200);
        assert_eq!(p.count_upto(64), 64);
        assert_eq!(p.count_upto(65), 65);
        assert_eq!(p.count_upto(1000), 200);
    }

    #[test]
    fn duplicates_reorders_and_invalid_are_told_apart() {
        let mut p = PairRecv::default();
        assert_eq!(p.record(1), Seen::New);
        assert_eq!(p.record(3), Seen::New);
        assert_eq!(p.record(2), Seen::NewReordered);
        assert_eq!(p.record(3), Seen::Duplicate);
        assert_eq!(p.record(1), Seen::Duplicate);
        assert_eq!(p.record(0), Seen::Invalid);
        assert_eq!(p.record(MAX_SEQ + 1), Seen::Invalid);
        assert_eq!(p.record(130), Seen::New);
        assert_eq!(
            (p.unique, p.duplicates, p.reordered, p.invalid),
            (4, 2, 1, 2)
        );
        assert_eq!(p.count_upto(3), 3);
        assert_eq!(p.count_upto(129), 3);
        assert_eq!(p.count_upto(130), 4);
    }

    fn recv_of(seqs: &[u64]) -> PairRecv {
        let mut p = PairRecv::default();
        for &s in seqs {
            p.record(s);
        }
        p
    }

    #[test]
    fn tally_counts_loss_per_pair() {
        // Two participants: 0 wrote 5 to 1, 1 wrote 3 to 0.
        let sent = vec![vec![0, 5], vec![3, 0]];
        let recv = vec![
            vec![PairRecv::default(), recv_of(&[1, 2, 3])], // 0 got all of 1's
            vec![recv_of(&[1, 2, 4, 4]), PairRecv::default()], // 1 missed 3 and 5, dup 4
        ];
        let t = tally(&sent, &recv);
        assert_eq!(
            t,
            Tally {
                expected: 8,
                delivered: 6,
                lost: 2,
                duplicated: 1,
                reordered: 0,
                phantom: 0
            }
        );
    }

    #[test]
    fn tally_reports_phantoms_above_what_was_written() {
        let sent = vec![vec![0, 2], vec![0, 0]];
        let recv = vec![vec![], vec![recv_of(&[1, 2, 7]), PairRecv::default()]];
        let t = tally(&sent, &recv);
        assert_eq!((t.expected, t.delivered, t.lost, t.phantom), (2, 2, 0, 1));
    }

    #[test]
    fn tally_handles_missing_rows() {
        let sent = vec![vec![0, 4]];
        let t = tally(&sent, &[]);
        assert_eq!((t.expected, t.delivered, t.lost), (4, 0, 4));
    }

    #[test]
    fn latency_summary_quantiles() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let l = summarize(&h);
        assert_eq!(l.count, 1000);
        assert!((499..=501).contains(&l.p50_us), "{l:?}");
        assert!((899..=901).contains(&l.p90_us), "{l:?}");
        assert!((989..=991).contains(&l.p99_us), "{l:?}");
        assert_eq!(l.max_us, 1000);
        assert_eq!(summarize(&new_histogram()), Latency::default());
    }
}
