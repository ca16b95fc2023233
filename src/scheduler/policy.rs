//! Scheduling policies: which query's ready task goes to the next free slot.
//!
//! A policy orders the queries that have ready tasks; the work queue keeps each query's
//! tasks (breadth-first over its ready stages) and asks the policy which query is next.
//! Every operation is O(log q) or O(1) in the number q of queries with ready tasks, never
//! a scan of the queued tasks.
//!
//! - `fifo`: the query submitted first goes first.
//! - `fair`: round robin, one task per query in turn.
//! - `priority`: the query with the least estimated remaining work goes first, with
//!   aging. Its rank is `ln(remaining_cost) + ln 2 × arrival / half_life`: ordering by it
//!   is ordering by `remaining_cost × 2^(-waited / half_life)` (the arrival terms differ
//!   from the waiting terms by the same amount for every query), so a query's cost counts
//!   half as much against a newer query for every `half_life` it has waited; and the key
//!   does not change while time passes, so a sorted set holds it. A query of cost C that
//!   arrived at t0 goes ahead of every query of cost c arriving after
//!   `t0 + half_life × log2(C / c)`: no query waits forever. Aging in proportion, not by
//!   a fixed credit per second, keeps the order independent of the scale of cost units.
//!
//! `priority` also preempts: its key is the rank a task carries to its executor, and a
//! task may be pushed to an executor whose slots are all busy when its rank is below a
//! running task's by a margin (see [`Policy::rank`] and [`running_rank`]). The aging
//! bounds suspensions as it bounds waits: an old query outranks every query that arrived
//! long enough after it.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Cost units taken to be one second of work on one core (one unit is 10k rows, see
/// [`crate::planner::ROWS_PER_UNIT`], which a core scans or aggregates in about a
/// millisecond).
pub const COST_UNITS_PER_SECOND: f64 = 1000.0;

/// The rank of a query with `cost` units of work left (a floor of one unit keeps it
/// finite), before aging.
fn cost_rank(cost: f64) -> f64 {
    cost.max(1.0).ln()
}

/// The rank of a task that has been running for `elapsed`, pushed with `rank` for a
/// query of `cost` remaining units. A task that has run longer than its query's estimate
/// implies shows the estimate was low, so it is taken to have at least as much work left
/// as it did so far: its rank rises as if its query's remaining cost were that much. A
/// long task whose query looks nearly done can then still be preempted by a short query.
pub fn running_rank(rank: f64, cost: f64, elapsed: Duration) -> f64 {
    let done = elapsed.as_secs_f64() * COST_UNITS_PER_SECOND;
    if done <= cost {
        // Within its estimate: the common case, without logarithms.
        return rank;
    }
    rank + (cost_rank(done) - cost_rank(cost)).max(0.0)
}

/// What a policy knows of a query with ready tasks.
#[derive(Debug, Clone)]
pub struct QueryInfo {
    /// Submission order (unique, increasing).
    pub seq: u64,
    /// Submission time, on the scheduler's clock.
    pub arrival: Duration,
    /// Estimated work left (cost units of the tasks not yet succeeded).
    pub remaining_cost: f64,
}

/// Orders the queries that have ready tasks.
pub trait Policy: fmt::Debug + Send {
    /// A query has ready tasks now (it had none).
    fn activate(&mut self, id: &Arc<str>, info: &QueryInfo);
    /// A query has no ready tasks any more, or ended.
    fn deactivate(&mut self, id: &Arc<str>);
    /// The query whose task goes next.
    fn next(&self) -> Option<Arc<str>>;
    /// A task of `id` (the query `next` named) was dispatched and it still has ready tasks.
    fn dispatched(&mut self, _id: &Arc<str>) {}
    /// A query's estimated remaining work changed.
    fn cost_changed(&mut self, _id: &Arc<str>, _info: &QueryInfo) {}
    /// How urgent a task of the query is, lower first, when this policy preempts: a task
    /// may then run on an executor whose slots are all busy if it is more urgent than
    /// one of the tasks there, which waits suspended until it ends. None: the policy
    /// never preempts.
    fn rank(&self, _info: &QueryInfo) -> Option<f64> {
        None
    }
}

/// The policies `--policy` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// First submitted, first served.
    Fifo,
    /// Round robin across queries.
    Fair,
    /// Least remaining work first, with aging.
    #[default]
    Priority,
}

impl PolicyKind {
    /// A fresh policy of this kind; `aging_half_life` (seconds, 0 for none) applies to
    /// `priority`.
    pub fn build(self, aging_half_life: f64) -> Box<dyn Policy> {
        match self {
            PolicyKind::Fifo => Box::<Fifo>::default(),
            PolicyKind::Fair => Box::<Fair>::default(),
            PolicyKind::Priority => Box::new(Priority::new(aging_half_life)),
        }
    }

    /// Every policy, for benchmarks.
    pub const ALL: [PolicyKind; 3] = [PolicyKind::Fifo, PolicyKind::Fair, PolicyKind::Priority];
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::Fifo => "fifo",
            PolicyKind::Fair => "fair",
            PolicyKind::Priority => "priority",
        })
    }
}

impl FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fifo" => Ok(PolicyKind::Fifo),
            "fair" => Ok(PolicyKind::Fair),
            "priority" => Ok(PolicyKind::Priority),
            other => Err(format!(
                "unknown policy '{other}' (expected fifo, fair or priority)"
            )),
        }
    }
}

/// First come, first served by submission order.
#[derive(Debug, Default)]
pub struct Fifo {
    order: BTreeSet<(u64, Arc<str>)>,
    seqs: HashMap<Arc<str>, u64>,
}

impl Policy for Fifo {
    fn activate(&mut self, id: &Arc<str>, info: &QueryInfo) {
        self.seqs.insert(id.clone(), info.seq);
        self.order.insert((info.seq, id.clone()));
    }

    fn deactivate(&mut self, id: &Arc<str>) {
        if let Some(seq) = self.seqs.remove(id) {
            self.order.remove(&(seq, id.clone()));
        }
    }

    fn next(&self) -> Option<Arc<str>> {
        self.order.first().map(|(_, id)| id.clone())
    }
}

/// Round robin: after a query gets a task it goes to the back of the ring.
#[derive(Debug, Default)]
pub struct Fair {
    ring: VecDeque<Arc<str>>,
}

impl Policy for Fair {
    fn activate(&mut self, id: &Arc<str>, _info: &QueryInfo) {
        self.ring.push_back(id.clone());
    }

    fn deactivate(&mut self, id: &Arc<str>) {
        // O(active queries): the front is the common case (the query just ran dry).
        if self.ring.front() == Some(id) {
            self.ring.pop_front();
        } else if let Some(at) = self.ring.iter().position(|q| q == id) {
            self.ring.remove(at);
        }
    }

    fn next(&self) -> Option<Arc<str>> {
        self.ring.front().cloned()
    }

    fn dispatched(&mut self, id: &Arc<str>) {
        if self.ring.front() == Some(id) {
            self.ring.rotate_left(1);
        }
    }
}

/// A total order on f64 keys.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key(f64);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Least estimated remaining work first, aged by arrival time.
#[derive(Debug)]
pub struct Priority {
    /// Rank added per second of later arrival (`ln 2 / half_life`).
    aging_per_second: f64,
    order: BTreeSet<(Key, u64, Arc<str>)>,
    keys: HashMap<Arc<str>, (Key, u64)>,
}

impl Priority {
    /// A priority policy under which a query's cost counts half as much against newer
    /// queries for every `aging_half_life` seconds it has waited; 0 turns aging off.
    pub fn new(aging_half_life: f64) -> Self {
        let aging_per_second = if aging_half_life > 0.0 {
            std::f64::consts::LN_2 / aging_half_life
        } else {
            0.0
        };
        Self {
            aging_per_second,
            order: BTreeSet::new(),
            keys: HashMap::new(),
        }
    }

    fn key(&self, info: &QueryInfo) -> Key {
        Key(cost_rank(info.remaining_cost) + self.aging_per_second * info.arrival.as_secs_f64())
    }
}

impl Policy for Priority {
    fn activate(&mut self, id: &Arc<str>, info: &QueryInfo) {
        let key = self.key(info);
        self.keys.insert(id.clone(), (key, info.seq));
        self.order.insert((key, info.seq, id.clone()));
    }

    fn deactivate(&mut self, id: &Arc<str>) {
        if let Some((key, seq)) = self.keys.remove(id) {
            self.order.remove(&(key, seq, id.clone()));
        }
    }

    fn next(&self) -> Option<Arc<str>> {
        self.order.first().map(|(_, _, id)| id.clone())
    }

    fn cost_changed(&mut self, id: &Arc<str>, info: &QueryInfo) {
        if self.keys.contains_key(id) {
            self.deactivate(id);
            self.activate(id, info);
        }
    }

    fn rank(&self, info: &QueryInfo) -> Option<f64> {
        Some(self.key(info).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated scheduler: queries with a number of equal tasks each, one slot, and a
    /// clock that advances one second per dispatched task. Returns the dispatch order.
    fn simulate(
        kind: PolicyKind,
        aging: f64,
        arrivals: &[(&str, u64, usize, f64)],
        steps: usize,
    ) -> Vec<String> {
        let mut policy = kind.build(aging);
        let mut left: HashMap<Arc<str>, (QueryInfo, usize, f64)> = HashMap::new();
        let mut order = Vec::new();
        let mut pending: Vec<_> = arrivals.to_vec();
        for (seq, now) in (0..steps as u64).enumerate() {
            pending.retain(|(name, at, tasks, cost)| {
                if *at > now {
                    return true;
                }
                let id: Arc<str> = (*name).into();
                let info = QueryInfo {
                    seq: seq as u64 * 100 + left.len() as u64,
                    arrival: Duration::from_secs(*at),
                    remaining_cost: *tasks as f64 * cost,
                };
                policy.activate(&id, &info);
                left.insert(id, (info, *tasks, *cost));
                false
            });
            let Some(id) = policy.next() else { continue };
            order.push(id.to_string());
            let (info, tasks, cost) = left.get_mut(&id).unwrap();
            *tasks -= 1;
            info.remaining_cost -= *cost;
            if *tasks == 0 {
                policy.deactivate(&id);
                left.remove(&id);
            } else {
                let info = info.clone();
                policy.dispatched(&id);
                policy.cost_changed(&id, &info);
            }
        }
        order
    }

    fn compress(order: &[String]) -> String {
        order
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("")
    }

    #[test]
    fn fifo_serves_queries_in_submission_order() {
        let order = simulate(
            PolicyKind::Fifo,
            0.0,
            &[("a", 0, 3, 10.0), ("b", 0, 2, 1.0), ("c", 1, 1, 1.0)],
            6,
        );
        assert_eq!(compress(&order), "aaabbc");
    }

    #[test]
    fn fair_takes_turns() {
        let order = simulate(
            PolicyKind::Fair,
            0.0,
            &[("a", 0, 3, 10.0), ("b", 0, 2, 1.0), ("c", 1, 2, 1.0)],
            7,
        );
        assert_eq!(compress(&order), "abacbac");
    }

    #[test]
    fn priority_runs_the_query_closest_to_done_first() {
        // b is cheaper than a in total; c arrives later but is cheaper still.
        let order = simulate(
            PolicyKind::Priority,
            0.0,
            &[("a", 0, 3, 100.0), ("b", 0, 2, 10.0), ("c", 1, 1, 5.0)],
            6,
        );
        assert_eq!(compress(&order), "bcbaaa");
    }

    #[test]
    fn a_nearly_done_query_overtakes_a_cheaper_one() {
        // a costs 5 per task, 2 tasks left after its first = 10 remaining; b costs 12 in all.
        let order = simulate(
            PolicyKind::Priority,
            0.0,
            &[("a", 0, 3, 5.0), ("b", 1, 4, 3.0)],
            7,
        );
        assert_eq!(compress(&order), "aaabbbb");
    }

    #[test]
    fn without_aging_a_long_query_starves_behind_a_stream_of_short_ones() {
        let mut arrivals = vec![("long", 0, 1, 50.0)];
        let names: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
        for (i, name) in names.iter().enumerate() {
            arrivals.push((name.as_str(), i as u64, 1, 1.0));
        }
        let order = simulate(PolicyKind::Priority, 0.0, &arrivals, 20);
        assert!(!order.contains(&"long".to_string()), "{order:?}");
    }

    #[test]
    fn aging_bounds_the_wait_of_an_old_long_query() {
        // A new short query (cost 1) arrives every second; the long one (cost 50) arrived
        // first. With a half-life of one second it must go once 50 × 2^-t < 1, that is
        // at t = 6 (log2 50 = 5.6; ties go to the older query).
        let mut arrivals = vec![("long", 0, 1, 50.0)];
        let names: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
        for (i, name) in names.iter().enumerate() {
            arrivals.push((name.as_str(), i as u64, 1, 1.0));
        }
        let order = simulate(PolicyKind::Priority, 1.0, &arrivals, 20);
        let at = order
            .iter()
            .position(|q| q == "long")
            .expect("long query dispatched");
        assert_eq!(at, 6, "long query dispatched at step {at}: {order:?}");
    }

    #[test]
    fn aging_is_proportional_to_cost() {
        // Ten times the costs, same order: aging does not depend on the unit of cost.
        let arrivals = |scale: f64| {
            vec![
                ("a", 0, 4, 10.0 * scale),
                ("b", 1, 1, 25.0 * scale),
                ("c", 2, 1, 2.0 * scale),
            ]
        };
        let small = simulate(PolicyKind::Priority, 2.0, &arrivals(1.0), 6);
        let large = simulate(PolicyKind::Priority, 2.0, &arrivals(10.0), 6);
        assert_eq!(small, large);
        // b (25) arrives when a has 30 left: a second of waiting halves a's cost by a
        // factor 2^(1/2), enough to stay ahead; c (2) is far cheaper and goes at once.
        assert_eq!(compress(&small), "aacaab");
        let unaged = simulate(PolicyKind::Priority, 0.0, &arrivals(1.0), 6);
        assert_eq!(compress(&unaged), "abcaaa");
    }

    #[test]
    fn a_task_running_longer_than_its_estimate_ranks_as_costlier() {
        let rank = cost_rank(10.0);
        // Within its estimate (10 units = 10 ms) the rank stays.
        assert_eq!(running_rank(rank, 10.0, Duration::from_millis(5)), rank);
        // After 2 s it ranks like a query with 2,000 units left.
        let long = running_rank(rank, 10.0, Duration::from_secs(2));
        assert!((long - cost_rank(2000.0)).abs() < 1e-9, "{long}");
        assert!(running_rank(rank, 10.0, Duration::from_secs(3)) > long);
    }

    #[test]
    fn policy_names_parse() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.to_string().parse::<PolicyKind>().unwrap(), kind);
        }
        assert!("lifo".parse::<PolicyKind>().is_err());
    }
}
