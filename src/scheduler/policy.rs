//! Scheduling policies: which query's ready task goes to the next free slot.
//!
//! A policy orders the queries that have ready tasks; the work queue keeps each query's
//! tasks (breadth-first over its ready stages) and asks the policy which query is next.
//! Every operation is O(log q) or O(1) in the number q of queries with ready tasks, never
//! a scan of the queued tasks.
//!
//! - `fifo`: the query submitted first goes first.
//! - `fair`: round robin, one task per query in turn.
//! - `priority`: the query with the least estimated remaining work goes first, with an
//!   aging credit of `aging_rate` cost units per second of waiting. The credit makes the
//!   order `remaining_cost - aging_rate × (now - arrival)`, which sorts the same as
//!   `remaining_cost + aging_rate × arrival`: a key that does not change while time
//!   passes, so a sorted set holds it. A query of cost C that arrived at t0 goes ahead of
//!   every query of cost c arriving after `t0 + (C - c) / aging_rate`: no query waits
//!   forever.
//!
//! `priority` also preempts: its key is the rank a task carries to its executor, and a
//! task may be pushed to an executor whose slots are all busy when it outranks a task
//! running there (see [`Policy::rank`]). The aging credit bounds suspensions as it
//! bounds waits: an old query outranks every query that arrived long enough after it.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Cost units of waiting credited per second under the `priority` policy by default.
pub const DEFAULT_AGING_RATE: f64 = 100.0;

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
    /// A fresh policy of this kind.
    pub fn build(self, aging_rate: f64) -> Box<dyn Policy> {
        match self {
            PolicyKind::Fifo => Box::<Fifo>::default(),
            PolicyKind::Fair => Box::<Fair>::default(),
            PolicyKind::Priority => Box::new(Priority::new(aging_rate)),
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
    aging_rate: f64,
    order: BTreeSet<(Key, u64, Arc<str>)>,
    keys: HashMap<Arc<str>, (Key, u64)>,
}

impl Priority {
    /// A priority policy crediting `aging_rate` cost units per second of waiting.
    pub fn new(aging_rate: f64) -> Self {
        Self {
            aging_rate,
            order: BTreeSet::new(),
            keys: HashMap::new(),
        }
    }

    fn key(&self, info: &QueryInfo) -> Key {
        Key(info.remaining_cost + self.aging_rate * info.arrival.as_secs_f64())
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
            &[("a", 0, 3, 10.0), ("b", 0, 2, 1.0), ("c", 1, 1, 0.5)],
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
        // first. With 10 units of credit per second it must go once 50 - 10 t < 1, that
        // is at t = 5 (ties go to the older query).
        let mut arrivals = vec![("long", 0, 1, 50.0)];
        let names: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
        for (i, name) in names.iter().enumerate() {
            arrivals.push((name.as_str(), i as u64, 1, 1.0));
        }
        let order = simulate(PolicyKind::Priority, 10.0, &arrivals, 20);
        let at = order
            .iter()
            .position(|q| q == "long")
            .expect("long query dispatched");
        assert!(at <= 6, "long query dispatched at step {at}: {order:?}");
        assert!(at >= 4, "aging must not erase priority at once: {order:?}");
    }

    #[test]
    fn policy_names_parse() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.to_string().parse::<PolicyKind>().unwrap(), kind);
        }
        assert!("lifo".parse::<PolicyKind>().is_err());
    }
}
