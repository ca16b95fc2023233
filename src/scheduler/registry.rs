//! The executor registry: who is connected, their free slots and the stream to each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

use super::policy::running_rank;
use super::query::TaskRef;
use crate::proto::SchedulerMessage;
use crate::shuffle::MapLocation;

/// By default a task preempts only when its query has under 1/10 of the (aged) remaining
/// work of the task it displaces: cheap queries jump ahead of long ones, while long
/// queries of comparable size do not keep suspending each other.
pub const DEFAULT_PREEMPT_COST_RATIO: f64 = 10.0;

/// How urgent a pushed task is: its rank under the policy (lower first) and the
/// remaining work of its query when it was pushed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Urgency {
    /// Rank under the policy.
    pub rank: f64,
    /// The query's estimated remaining work, cost units.
    pub cost: f64,
}

impl Urgency {
    /// True when a task of this urgency may displace `other` at `now`: its rank is below
    /// the other's [`running_rank`] by at least `margin` (`ln` of the preemption cost
    /// ratio), that is (under `priority`) its query has under 1/ratio of the other's aged
    /// remaining work. The test is monotone in rank, so when the most urgent waiting task
    /// may displace nothing, no other may either.
    pub fn preempts(&self, other: &Held, now: Instant, margin: f64) -> bool {
        self.rank + margin < other.rank_at(now)
    }
}

/// A task an executor holds: its urgency when pushed, since when, and whether it runs
/// at normal OS priority.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    /// Urgency when pushed.
    pub urgency: Urgency,
    /// When it was pushed.
    pub since: Instant,
    /// Pushed urgent, or promoted since.
    pub urgent: bool,
    /// The task's attempt.
    pub attempt: u32,
}

impl Held {
    /// Its rank at `now`, raised once it has run past its query's estimate.
    pub fn rank_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.since);
        running_rank(self.urgency.rank, self.urgency.cost, elapsed)
    }
}

/// The sending half of an executor's stream.
pub type ExecutorSender = UnboundedSender<Result<SchedulerMessage, Status>>;

/// One connected executor.
#[derive(Debug)]
pub struct ExecutorEntry {
    /// Where its shuffle output is served.
    pub location: MapLocation,
    /// Slots it offered.
    pub slots: u32,
    /// Tasks it takes beyond its slots when they outrank tasks running there.
    pub preempt_slots: u32,
    /// Tasks it runs now (some may be suspended), with their urgency when pushed.
    pub running: HashMap<(Arc<str>, TaskRef), Held>,
    sender: ExecutorSender,
    /// Connection generation, so a stale stream's end does not remove a newer connection.
    pub generation: u64,
}

impl ExecutorEntry {
    /// Slots not running a task.
    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.running.len() as u32)
    }

    /// True when a task of `query` with `urgency` may run here at once although every
    /// slot is busy: the executor has room for one more task, and the task may displace
    /// (see [`Urgency::preempts`]) the least urgent task of another query among those
    /// holding a slot, which the executor then suspends. The executor never suspends a
    /// task for one of its own query, so the query's own tasks here keep their slots:
    /// when they hold every slot, the task could only wait.
    pub fn admits_urgent(&self, query: &str, urgency: Urgency, now: Instant, margin: f64) -> bool {
        if self.running.len() >= (self.slots + self.preempt_slots) as usize {
            return false;
        }
        let own = self.running.keys().filter(|(q, _)| **q == *query).count();
        let Some(free_for_others) = (self.slots as usize).checked_sub(own + 1) else {
            return false;
        };
        let mut others: Vec<(f64, &Held)> = self
            .running
            .iter()
            .filter(|((q, _), _)| **q != *query)
            .map(|(_, h)| (h.rank_at(now), h))
            .collect();
        others.sort_by(|a, b| a.0.total_cmp(&b.0));
        let Some((_, victim)) = others.get(free_for_others) else {
            return true;
        };
        urgency.preempts(victim, now, margin)
    }

    /// Pushes a message down the executor's stream; false when the stream is gone.
    pub fn send(&self, message: SchedulerMessage) -> bool {
        self.sender.send(Ok(message)).is_ok()
    }
}

/// The least urgent (highest) rank pushed per query in one dispatch round, kept for the
/// two highest queries: enough to tell any query the highest rank of another.
#[derive(Debug, Default)]
pub struct Costliest {
    top: [Option<(Arc<str>, f64)>; 2],
}

impl Costliest {
    /// A task of `query` with `rank` was pushed.
    pub fn note(&mut self, query: &Arc<str>, rank: f64) {
        let [first, second] = &mut self.top;
        match (first.as_mut(), second.as_mut()) {
            (Some((q, r)), _) if q == query => *r = r.max(rank),
            (_, Some((q, r))) if q == query => *r = r.max(rank),
            (_, Some((_, r))) if *r >= rank => {}
            _ => *second = Some((query.clone(), rank)),
        }
        let rank_of = |entry: &Option<(Arc<str>, f64)>| entry.as_ref().map(|(_, r)| *r);
        if rank_of(second) > rank_of(first) {
            std::mem::swap(first, second);
        }
    }

    /// The highest rank pushed for a query other than `query`.
    fn above(&self, query: &str) -> Option<f64> {
        self.top
            .iter()
            .flatten()
            .find(|(q, _)| &**q != query)
            .map(|(_, r)| *r)
    }
}

/// Connected executors by id.
#[derive(Debug)]
pub struct Registry {
    executors: HashMap<String, ExecutorEntry>,
    next_generation: u64,
    /// `ln` of the preemption cost ratio: the rank margin a preempting task needs.
    preempt_margin: f64,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            executors: HashMap::new(),
            next_generation: 0,
            preempt_margin: DEFAULT_PREEMPT_COST_RATIO.ln(),
        }
    }
}

impl Registry {
    /// Preempting tasks need under 1/`ratio` of the remaining work of the task they
    /// displace (a ratio under 1 counts as 1).
    pub fn set_preempt_cost_ratio(&mut self, ratio: f64) {
        self.preempt_margin = ratio.max(1.0).ln();
    }

    /// Adds (or replaces) an executor; returns the replaced entry and the new generation.
    pub fn register(
        &mut self,
        location: MapLocation,
        slots: u32,
        preempt_slots: u32,
        sender: ExecutorSender,
    ) -> (Option<ExecutorEntry>, u64) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let entry = ExecutorEntry {
            location: location.clone(),
            slots,
            preempt_slots,
            running: HashMap::new(),
            sender,
            generation,
        };
        (
            self.executors.insert(location.executor_id, entry),
            generation,
        )
    }

    /// Removes an executor if `generation` is its current connection.
    pub fn remove(&mut self, executor_id: &str, generation: u64) -> Option<ExecutorEntry> {
        match self.executors.get(executor_id) {
            Some(e) if e.generation == generation => self.executors.remove(executor_id),
            _ => None,
        }
    }

    /// An executor.
    pub fn get(&self, executor_id: &str) -> Option<&ExecutorEntry> {
        self.executors.get(executor_id)
    }

    /// An executor, mutably.
    pub fn get_mut(&mut self, executor_id: &str) -> Option<&mut ExecutorEntry> {
        self.executors.get_mut(executor_id)
    }

    /// The executor with the most free slots, if any slot is free. Spreading tasks keeps
    /// every executor busy and shuffle traffic balanced.
    pub fn most_free(&mut self) -> Option<&mut ExecutorEntry> {
        self.executors
            .values_mut()
            .filter(|e| e.free_slots() > 0)
            .max_by_key(|e| (e.free_slots(), std::cmp::Reverse(e.generation)))
    }

    /// True when some executor has a free slot.
    pub fn has_free_slot(&self) -> bool {
        self.executors.values().any(|e| e.free_slots() > 0)
    }

    /// Where a task goes. With a free slot anywhere: its `home` executor (where most of
    /// its input lies) when that has a free slot, else the executor with the most free
    /// slots. With none and the task's query and urgency given (the policy preempts):
    /// among the executors where it may preempt a running task, its home, else the one
    /// running the fewest tasks.
    pub fn pick(
        &mut self,
        preempt: Option<(&str, Urgency)>,
        home: Option<&str>,
        now: Instant,
    ) -> Option<&mut ExecutorEntry> {
        let margin = self.preempt_margin;
        let free = self.has_free_slot();
        let home_fits = home
            .and_then(|id| self.executors.get(id))
            .is_some_and(|e| match preempt {
                _ if free => e.free_slots() > 0,
                Some((query, urgency)) => e.admits_urgent(query, urgency, now, margin),
                None => false,
            });
        if home_fits {
            return home.and_then(|id| self.executors.get_mut(id));
        }
        if free {
            return self.most_free();
        }
        let (query, urgency) = preempt?;
        self.executors
            .values_mut()
            .filter(|e| e.admits_urgent(query, urgency, now, margin))
            .min_by_key(|e| (e.running.len(), e.generation))
    }

    /// True when a task of `urgency` may displace a task running on any executor: it is
    /// then urgent, and runs at normal OS priority while that work runs at a lower one.
    /// (Marking every task that merely outranks one running somewhere urgent was measured
    /// to be worse: nearly done long queries then share the CPU with short ones.)
    /// Tasks of its own query do not count: they are never suspended for it.
    pub fn is_urgent(&self, query: &str, urgency: &Urgency, now: Instant) -> bool {
        self.executors
            .values()
            .flat_map(|e| e.running.iter())
            .filter(|((q, _), _)| **q != *query)
            .any(|(_, running)| urgency.preempts(running, now, self.preempt_margin))
    }

    /// Marks urgent every task held as not urgent that a task pushed since would now
    /// find urgent (`pushed`: the ranks pushed this round): its query has under 1/ratio
    /// of the pushed query's remaining work. Returns them with their executors, which are
    /// to continue them at normal OS priority: a cheap query pushed while nothing else
    /// ran then stops sharing low-priority CPU with the costly work that arrived after it.
    pub fn promote_outranked(
        &mut self,
        pushed: &Costliest,
        now: Instant,
    ) -> Vec<(String, Arc<str>, TaskRef)> {
        let margin = self.preempt_margin;
        let mut promoted = Vec::new();
        for (executor_id, executor) in &mut self.executors {
            for ((query, task), held) in executor.running.iter_mut() {
                let outranked = !held.urgent
                    && pushed
                        .above(query)
                        .is_some_and(|rank| held.rank_at(now) + margin < rank);
                if outranked {
                    held.urgent = true;
                    promoted.push((executor_id.clone(), query.clone(), *task));
                }
            }
        }
        promoted
    }

    /// Every executor.
    pub fn iter(&self) -> impl Iterator<Item = &ExecutorEntry> {
        self.executors.values()
    }

    /// Number of executors.
    pub fn len(&self) -> usize {
        self.executors.len()
    }

    /// True when none is connected.
    pub fn is_empty(&self) -> bool {
        self.executors.is_empty()
    }

    /// Total and busy slots (tasks suspended beyond the slots not counted).
    pub fn slots(&self) -> (u32, u32) {
        self.executors.values().fold((0, 0), |(total, busy), e| {
            (
                total + e.slots,
                busy + (e.running.len() as u32).min(e.slots),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn executor(registry: &mut Registry, id: &str, slots: u32, preempt_slots: u32) {
        let (sender, _receiver) = tokio::sync::mpsc::unbounded_channel();
        let location = MapLocation {
            executor_id: id.into(),
            flight_address: String::new(),
            background_flight_address: String::new(),
        };
        registry.register(location, slots, preempt_slots, sender);
    }

    /// The urgency of a query of `cost` under `priority` without aging.
    fn urgency(cost: f64) -> Urgency {
        Urgency {
            rank: cost.ln(),
            cost,
        }
    }

    /// Whether a task of `query`, with `cost` left, finds an executor at `now` (a free
    /// slot, or a task it may preempt).
    fn placed(registry: &mut Registry, query: &str, cost: f64, now: Instant) -> bool {
        registry
            .pick(Some((query, urgency(cost))), None, now)
            .is_some()
    }

    fn run(registry: &mut Registry, id: &str, query: &str, cost: f64, since: Instant) {
        let entry = registry.get_mut(id).unwrap();
        let task = TaskRef {
            stage: 0,
            partition: entry.running.len() as u32,
        };
        let held = Held {
            urgency: urgency(cost),
            since,
            urgent: false,
            attempt: 0,
        };
        entry.running.insert((query.into(), task), held);
    }

    #[test]
    fn a_cheap_task_preempts_only_where_it_outranks_a_running_one_by_the_ratio() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 2, 1);
        run(&mut registry, "a", "long", 500.0, now);
        assert_eq!(
            registry.pick(None, None, now).unwrap().location.executor_id,
            "a"
        );
        run(&mut registry, "a", "long", 500.0, now);
        // Every slot busy: without an urgency nothing goes, nor without a tenth the work.
        assert!(registry.pick(None, None, now).is_none());
        assert!(!placed(&mut registry, "new", 60.0, now));
        let cheap = Some(("new", urgency(40.0)));
        assert_eq!(
            registry
                .pick(cheap, None, now)
                .unwrap()
                .location
                .executor_id,
            "a"
        );
        run(&mut registry, "a", "short", 40.0, now);
        // The preemption room is used up.
        assert!(!placed(&mut registry, "new", 1.0, now));
        // Urgent where it may displace a running task.
        assert!(registry.is_urgent("new", &urgency(5.0), now));
        assert!(!registry.is_urgent("new", &urgency(60.0), now));
        assert_eq!(registry.slots(), (2, 2));
    }

    #[test]
    fn queries_of_similar_size_do_not_preempt_each_other() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 4);
        run(&mut registry, "a", "q21", 1800.0, now);
        // A third of the work left: not cheap enough.
        assert!(!placed(&mut registry, "new", 600.0, now));
        assert!(placed(&mut registry, "new", 150.0, now));
    }

    #[test]
    fn a_task_running_far_past_its_estimate_becomes_preemptible() {
        let pushed = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 1);
        // Its query looks nearly done (20 units), so a 35-unit query may not displace it.
        run(&mut registry, "a", "long", 20.0, pushed);
        assert!(!placed(&mut registry, "new", 35.0, pushed));
        // 100 ms are about 100 units of work: still not ten times 35.
        let later = pushed + Duration::from_millis(100);
        assert!(!placed(&mut registry, "new", 35.0, later));
        // After a second it is taken to have 1,000 units left.
        let much_later = pushed + Duration::from_secs(1);
        assert!(placed(&mut registry, "new", 35.0, much_later));
        assert!(registry.is_urgent("new", &urgency(35.0), much_later));
    }

    #[test]
    fn no_preemption_past_tasks_at_least_as_urgent() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 4);
        run(&mut registry, "a", "long", 900.0, now);
        run(&mut registry, "a", "short", 20.0, now);
        // The short task holds the slot; the long one waits already.
        assert!(!placed(&mut registry, "new", 10.0, now));
        assert!(placed(&mut registry, "new", 1.0, now));
    }

    #[test]
    fn urgent_tasks_spread_over_executors() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 2);
        executor(&mut registry, "b", 1, 2);
        run(&mut registry, "a", "long", 500.0, now);
        run(&mut registry, "b", "long", 500.0, now);
        run(&mut registry, "a", "short", 20.0, now);
        let cheaper = Some(("new", urgency(1.0)));
        assert_eq!(
            registry
                .pick(cheaper, None, now)
                .unwrap()
                .location
                .executor_id,
            "b"
        );
        // An executor with preemption off takes nothing beyond its slots.
        executor(&mut registry, "c", 1, 0);
        run(&mut registry, "c", "long", 500.0, now);
        run(&mut registry, "b", "short", 20.0, now);
        assert_eq!(
            registry
                .pick(cheaper, None, now)
                .unwrap()
                .location
                .executor_id,
            "a"
        );
    }

    #[test]
    fn a_task_goes_where_its_input_lies_when_there_is_room() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 2, 1);
        executor(&mut registry, "b", 2, 1);
        run(&mut registry, "a", "long", 500.0, now);
        let picked = |registry: &mut Registry, preempt, home| {
            registry
                .pick(preempt, home, now)
                .map(|e| e.location.executor_id.clone())
        };
        // "b" has more free slots, but "a" holds the input and has one free.
        assert_eq!(picked(&mut registry, None, None).as_deref(), Some("b"));
        assert_eq!(picked(&mut registry, None, Some("a")).as_deref(), Some("a"));
        // A full home, or one that left, gives way to the most free.
        run(&mut registry, "a", "long", 500.0, now);
        assert_eq!(picked(&mut registry, None, Some("a")).as_deref(), Some("b"));
        assert_eq!(
            picked(&mut registry, None, Some("gone")).as_deref(),
            Some("b")
        );
        // Every slot busy: an urgent task preempts at its home while the home has room
        // for it, though "a" would win the tie otherwise.
        run(&mut registry, "b", "long", 500.0, now);
        run(&mut registry, "b", "long", 500.0, now);
        let cheap = Some(("new", urgency(1.0)));
        assert_eq!(picked(&mut registry, cheap, None).as_deref(), Some("a"));
        assert_eq!(
            picked(&mut registry, cheap, Some("b")).as_deref(),
            Some("b")
        );
        run(&mut registry, "b", "short", 20.0, now);
        assert_eq!(
            picked(&mut registry, cheap, Some("b")).as_deref(),
            Some("a")
        );
        run(&mut registry, "a", "short", 20.0, now);
        assert_eq!(picked(&mut registry, cheap, Some("a")), None);
    }

    #[test]
    fn a_querys_own_tasks_are_not_taken_for_victims() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 2, 2);
        // Both slots hold tasks of "new" itself, which the executor never suspends for
        // it, however much more urgent its next task is.
        run(&mut registry, "a", "new", 500.0, now);
        run(&mut registry, "a", "new", 500.0, now);
        assert!(!placed(&mut registry, "new", 1.0, now));
        assert!(!registry.is_urgent("new", &urgency(1.0), now));
        // Another query's cheap task may displace them.
        assert!(placed(&mut registry, "other", 1.0, now));
        assert!(registry.is_urgent("other", &urgency(1.0), now));
    }

    #[test]
    fn the_victim_is_taken_among_other_queries_after_the_querys_own_slots() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 2, 2);
        // "new" keeps one slot; the other is held by a long query, the one to displace.
        run(&mut registry, "a", "new", 20.0, now);
        run(&mut registry, "a", "long", 500.0, now);
        assert!(placed(&mut registry, "new", 20.0, now));
        assert!(!placed(&mut registry, "new", 60.0, now));
    }

    #[test]
    fn costliest_tells_each_query_the_highest_rank_of_another() {
        let mut pushed = Costliest::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert_eq!(pushed.above("a"), None);
        pushed.note(&a, 1.0);
        assert_eq!((pushed.above("a"), pushed.above("x")), (None, Some(1.0)));
        pushed.note(&b, 5.0);
        pushed.note(&a, 7.0);
        pushed.note(&c, 3.0);
        assert_eq!(pushed.above("a"), Some(5.0));
        assert_eq!(pushed.above("b"), Some(7.0));
        assert_eq!(pushed.above("c"), Some(7.0));
        pushed.note(&c, 6.0);
        assert_eq!(pushed.above("a"), Some(6.0));
    }

    #[test]
    fn costly_pushes_promote_the_cheap_tasks_running_as_not_urgent() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 4, 0);
        // Pushed while nothing else ran: not urgent.
        run(&mut registry, "a", "short", 10.0, now);
        run(&mut registry, "a", "medium", 1000.0, now);
        run(&mut registry, "a", "long", 5000.0, now);
        let mut pushed = Costliest::default();
        pushed.note(&"long".into(), 5000f64.ln());
        // Only the query with under a tenth of the long one's work is promoted, once.
        let promoted = registry.promote_outranked(&pushed, now);
        assert_eq!(promoted.len(), 1);
        assert_eq!((promoted[0].0.as_str(), &*promoted[0].1), ("a", "short"));
        assert!(registry.promote_outranked(&pushed, now).is_empty());
        // A query's own pushes never promote it: a far costlier push of "medium" promotes
        // "long" only.
        let mut own = Costliest::default();
        own.note(&"medium".into(), 1e6f64.ln());
        let promoted = registry.promote_outranked(&own, now);
        assert_eq!(promoted.len(), 1);
        assert_eq!(&*promoted[0].1, "long");
    }
}
