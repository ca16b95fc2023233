//! The executor registry: who is connected, their free slots, the stream to each, and
//! which of their tasks to suspend for a far cheaper query's task (preemption) and to
//! resume after.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;
use tracing::info;

use super::policy::running_rank;
use super::query::TaskRef;
use super::slowness::Slowness;
use crate::proto::SchedulerMessage;
use crate::shuffle::MapLocation;

/// Until told otherwise, a task preempts only when its query has under 1/10 of the
/// (aged) remaining work of the task it suspends: cheap queries jump ahead of long ones,
/// while long queries of comparable size do not keep suspending each other.
const DEFAULT_PREEMPT_COST_RATIO: f64 = 10.0;

/// How urgent a pushed task is: its rank under the policy (lower first) and the
/// remaining work of its query when it was pushed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Urgency {
    /// Rank under the policy.
    pub rank: f64,
    /// The query's estimated remaining work, cost units.
    pub cost: f64,
}

/// A task an executor holds: its urgency when pushed, since when, its attempt, and
/// whether the scheduler suspended it.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    /// Urgency when pushed.
    pub urgency: Urgency,
    /// When it was pushed.
    pub since: Instant,
    /// The task's attempt.
    pub attempt: u32,
    /// Suspended for a far cheaper query's task; it waits without a slot.
    pub suspended: bool,
}

impl Held {
    /// Its rank at `now`, raised once it has run past its query's estimate. The one
    /// place a running task's urgency is computed: both which task to suspend and which
    /// to resume follow it.
    pub fn rank_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.since);
        running_rank(self.urgency.rank, self.urgency.cost, elapsed)
    }
}

/// A task an executor holds, by query and task.
pub type HeldKey = (Arc<str>, TaskRef);

/// The sending half of an executor's stream.
pub type ExecutorSender = UnboundedSender<Result<SchedulerMessage, Status>>;

/// One connected executor.
#[derive(Debug)]
pub struct ExecutorEntry {
    /// Where its shuffle output is served.
    pub location: MapLocation,
    /// Slots it offered.
    pub slots: u32,
    /// Suspended tasks it may hold beyond its slots.
    pub preempt_slots: u32,
    /// Tasks it holds (running or suspended), with their urgency when pushed.
    pub running: HashMap<HeldKey, Held>,
    sender: ExecutorSender,
    /// Connection generation, so a stale stream's end does not remove a newer connection.
    pub generation: u64,
    /// It is leaving (SIGTERM): it takes no new task, finishes those it holds and serves
    /// its shuffle output until nothing needs it.
    pub draining: bool,
    /// It was told to stop (its drain is over).
    pub stopped: bool,
    /// How slow its tasks have been against their stages' medians.
    pub slowness: Slowness,
    /// It was found slow: while a faster executor is connected it holds at most one
    /// task, until its tasks show it fast again (see [`Registry::record_task_time`]).
    pub on_probation: bool,
}

impl ExecutorEntry {
    /// Slots for new tasks: its slots less the tasks it holds. A suspended task keeps its
    /// claim, so it resumes before new work takes the slot back.
    pub fn free_slots(&self) -> u32 {
        if self.draining {
            return 0;
        }
        self.slots.saturating_sub(self.running.len() as u32)
    }

    /// The task to suspend so that a task of `query` with `urgency` runs here at once
    /// although every slot is busy: the least urgent running task of another query,
    /// when the new task outranks it by `margin` (`ln` of the preemption cost ratio:
    /// under `priority`, its query has under 1/ratio of the other's aged remaining work)
    /// and the executor has room for one more suspended task. A task never suspends one
    /// of its own query: tasks of a stage share operator state (a hash join's build side
    /// is built by one task and awaited by the others). The test is monotone in rank, so
    /// when the most urgent waiting task may displace nothing, no other may either.
    pub fn victim(
        &self,
        query: &str,
        urgency: Urgency,
        now: Instant,
        margin: f64,
    ) -> Option<HeldKey> {
        if self.draining || self.running.len() >= (self.slots + self.preempt_slots) as usize {
            return None;
        }
        let (key, rank) = self
            .running
            .iter()
            .filter(|((q, _), held)| **q != *query && !held.suspended)
            .map(|(key, held)| (key, held.rank_at(now)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        (urgency.rank + margin < rank).then(|| key.clone())
    }

    /// The suspended task to resume, when fewer tasks run than it has slots: the most
    /// urgent one (the earliest pushed among equals).
    pub fn to_resume(&self, now: Instant) -> Option<HeldKey> {
        let suspended = self.running.values().filter(|h| h.suspended).count();
        if suspended == 0 || self.running.len() - suspended >= self.slots as usize {
            return None;
        }
        self.running
            .iter()
            .filter(|(_, held)| held.suspended)
            .min_by(|a, b| {
                a.1.rank_at(now)
                    .total_cmp(&b.1.rank_at(now))
                    .then(a.1.since.cmp(&b.1.since))
            })
            .map(|(key, _)| key.clone())
    }

    /// Pushes a message down the executor's stream; false when the stream is gone.
    pub fn send(&self, message: SchedulerMessage) -> bool {
        self.sender.send(Ok(message)).is_ok()
    }
}

/// Connected executors by id.
#[derive(Debug)]
pub struct Registry {
    executors: HashMap<String, ExecutorEntry>,
    next_generation: u64,
    /// `ln` of the preemption cost ratio: the rank margin a preempting task needs.
    preempt_margin: f64,
    /// An executor this many times slower than its stages' medians gets no new task
    /// while a faster one is connected; 0: never left out.
    slow_factor: f64,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            executors: HashMap::new(),
            next_generation: 0,
            preempt_margin: DEFAULT_PREEMPT_COST_RATIO.ln(),
            slow_factor: 0.0,
        }
    }
}

impl Registry {
    /// Preempting tasks need under 1/`ratio` of the remaining work of the task they
    /// displace (a ratio under 1 counts as 1).
    pub fn set_preempt_cost_ratio(&mut self, ratio: f64) {
        self.preempt_margin = ratio.max(1.0).ln();
    }

    /// Leaves executors `factor` times slower than their stages' medians out of new work
    /// while a faster one is connected (0: never).
    pub fn set_slow_factor(&mut self, factor: f64) {
        self.slow_factor = factor;
    }

    /// Which executors take a new task at `now`: those with a free slot that, while a
    /// faster executor is connected, are not far slower than their stages' medians
    /// and, on probation, hold no task (see [`Self::set_slow_factor`]). The cutoff is
    /// computed once, for every executor the returned test is asked about.
    pub fn new_task_takers(&self, now: Instant) -> impl Fn(&ExecutorEntry) -> bool + Copy + use<> {
        let cutoff = self.slowness_cutoff(now);
        move |executor| takes_new_task(executor, cutoff, now)
    }

    /// Adds a task of `executor` that ran `took` where its stage's median is `median`
    /// to its slowness. Past the slow factor it goes on probation; it comes off once
    /// its slowness is back under half way between 1 and the factor. True when it went
    /// on or came off.
    pub fn record_task_time(
        &mut self,
        executor_id: &str,
        took: Duration,
        median: Duration,
        now: Instant,
    ) -> bool {
        let factor = self.slow_factor;
        let Some(executor) = self.executors.get_mut(executor_id) else {
            return false;
        };
        executor.slowness.record(took, median, now);
        if factor <= 0.0 {
            return false;
        }
        let slowness = executor.slowness.at(now);
        if slowness > factor && !executor.on_probation {
            executor.on_probation = true;
            info!(executor = %executor_id, slowness, "executor found slow; it takes one task at a time until it is fast again");
        } else if slowness <= 1.0 + (factor - 1.0) / 2.0 && executor.on_probation {
            executor.on_probation = false;
            info!(executor = %executor_id, slowness, "executor fast again");
        } else {
            return false;
        }
        self.publish_probation();
        true
    }

    /// Sets the gauge of executors on probation for slowness.
    fn publish_probation(&self) {
        let slow = self.executors.values().filter(|e| e.on_probation).count();
        metrics::gauge!("baton_executors_on_probation").set(slow as f64);
    }

    /// The slowness past which an executor is left out at `now`: the factor, while an
    /// executor that takes tasks is under it and not on probation; None when none is
    /// left out.
    fn slowness_cutoff(&self, now: Instant) -> Option<f64> {
        let factor = self.slow_factor;
        let someone_fast = factor > 0.0
            && self.executors.values().any(|e| {
                !e.draining && e.slots > 0 && !e.on_probation && e.slowness.at(now) <= factor
            });
        someone_fast.then_some(factor)
    }

    /// Adds an executor; returns its connection generation, or None when an executor of
    /// that id is registered already.
    pub fn register(
        &mut self,
        location: MapLocation,
        slots: u32,
        preempt_slots: u32,
        sender: ExecutorSender,
    ) -> Option<u64> {
        if self.executors.contains_key(&location.executor_id) {
            return None;
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let entry = ExecutorEntry {
            location: location.clone(),
            slots,
            preempt_slots,
            running: HashMap::new(),
            sender,
            generation,
            draining: false,
            stopped: false,
            slowness: Slowness::new(Instant::now()),
            on_probation: false,
        };
        self.executors.insert(location.executor_id, entry);
        Some(generation)
    }

    /// Removes an executor if `generation` is its current connection.
    pub fn remove(&mut self, executor_id: &str, generation: u64) -> Option<ExecutorEntry> {
        let removed = match self.executors.get(executor_id) {
            Some(e) if e.generation == generation => self.executors.remove(executor_id),
            _ => None,
        };
        if removed.as_ref().is_some_and(|e| e.on_probation) {
            self.publish_probation();
        }
        removed
    }

    /// An executor.
    pub fn get(&self, executor_id: &str) -> Option<&ExecutorEntry> {
        self.executors.get(executor_id)
    }

    /// An executor, mutably.
    pub fn get_mut(&mut self, executor_id: &str) -> Option<&mut ExecutorEntry> {
        self.executors.get_mut(executor_id)
    }

    /// The executor with the most free slots other than `avoid`, if one has any.
    pub fn most_free_except(&self, avoid: &str) -> Option<&str> {
        self.executors
            .values()
            .filter(|e| e.free_slots() > 0 && e.location.executor_id != avoid)
            .max_by_key(|e| (e.free_slots(), std::cmp::Reverse(e.generation)))
            .map(|e| e.location.executor_id.as_str())
    }

    /// True when some executor has a free slot.
    pub fn has_free_slot(&self) -> bool {
        self.executors.values().any(|e| e.free_slots() > 0)
    }

    /// Where a task goes, and which task it suspends there. With a free slot on an
    /// executor that takes new tasks ([`Self::new_task_takers`]): its `home` executor
    /// (where most of its input lies) when that has one, else the executor with the most
    /// free slots, which spreads tasks and shuffle traffic. With none and the task's query and urgency
    /// given (the policy preempts): among the executors with a task it may suspend (see
    /// [`ExecutorEntry::victim`]), its home, else the one holding the fewest tasks.
    pub fn pick(
        &mut self,
        preempt: Option<(&str, Urgency)>,
        home: Option<&str>,
        now: Instant,
    ) -> Option<(&mut ExecutorEntry, Option<HeldKey>)> {
        let margin = self.preempt_margin;
        // Executors far slower than the others take no new task while one of those is
        // connected (see `slowness`).
        let open = self.new_task_takers(now);
        if self.executors.values().any(open) {
            let home_open = home.and_then(|id| self.executors.get(id)).is_some_and(open);
            let entry = if home_open {
                home.and_then(|id| self.executors.get_mut(id))
            } else {
                self.executors
                    .values_mut()
                    .filter(|e| open(e))
                    .max_by_key(|e| (e.free_slots(), std::cmp::Reverse(e.generation)))
            };
            return entry.map(|e| (e, None));
        }
        let (query, urgency) = preempt?;
        let victim_on = |e: &ExecutorEntry| e.victim(query, urgency, now, margin);
        let home_victim = home
            .and_then(|id| self.executors.get(id))
            .and_then(victim_on);
        if let Some(victim) = home_victim {
            return home
                .and_then(|id| self.executors.get_mut(id))
                .map(|e| (e, Some(victim)));
        }
        self.executors
            .values_mut()
            .filter_map(|e| victim_on(e).map(|victim| (e, victim)))
            .min_by_key(|(e, _)| (e.running.len(), e.generation))
            .map(|(e, victim)| (e, Some(victim)))
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

    /// The task slots stages are sized for: those of the executors that stay, an
    /// executor on probation counting one (it takes one task at a time).
    pub fn planning_slots(&self) -> u32 {
        self.executors
            .values()
            .filter(|e| !e.draining)
            .map(|e| {
                if e.on_probation {
                    e.slots.min(1)
                } else {
                    e.slots
                }
            })
            .sum()
    }

    /// Total and busy slots of the executors not leaving (suspended tasks not counted).
    pub fn slots(&self) -> (u32, u32) {
        let staying = self.executors.values().filter(|e| !e.draining);
        staying.fold((0, 0), |(total, busy), e| {
            (
                total + e.slots,
                busy + (e.running.values().filter(|h| !h.suspended).count() as u32).min(e.slots),
            )
        })
    }
}

/// Whether `executor` takes a new task at `now` under the slowness `cutoff` (see
/// [`Registry::new_task_takers`]).
fn takes_new_task(executor: &ExecutorEntry, cutoff: Option<f64>, now: Instant) -> bool {
    executor.free_slots() > 0
        && cutoff.is_none_or(|cutoff| {
            executor.slowness.at(now) <= cutoff
                && (!executor.on_probation || executor.running.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(registry: &mut Registry, id: &str, slots: u32, preempt_slots: u32) {
        let (sender, _receiver) = tokio::sync::mpsc::unbounded_channel();
        let location = MapLocation {
            executor_id: id.into(),
            flight_address: String::new(),
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

    /// Where a task of `query`, with `cost` left, goes at `now`, and what it suspends.
    fn placed(
        registry: &mut Registry,
        query: &str,
        cost: f64,
        home: Option<&str>,
        now: Instant,
    ) -> Option<(String, Option<String>)> {
        registry
            .pick(Some((query, urgency(cost))), home, now)
            .map(|(e, victim)| {
                let victim = victim.map(|(q, t)| format!("{q}/{}", t.partition));
                (e.location.executor_id.clone(), victim)
            })
    }

    /// Adds a running task of `query` to executor `id`; returns its key.
    fn run(registry: &mut Registry, id: &str, query: &str, cost: f64, since: Instant) -> HeldKey {
        let entry = registry.get_mut(id).unwrap();
        let task = TaskRef {
            stage: 0,
            partition: entry.running.len() as u32,
        };
        let held = Held {
            urgency: urgency(cost),
            since,
            attempt: 0,
            suspended: false,
        };
        entry.running.insert((query.into(), task), held);
        (query.into(), task)
    }

    fn suspend(registry: &mut Registry, id: &str, key: &HeldKey) {
        registry
            .get_mut(id)
            .unwrap()
            .running
            .get_mut(key)
            .unwrap()
            .suspended = true;
    }

    #[test]
    fn a_cheap_task_suspends_a_running_one_only_when_it_outranks_it_by_the_ratio() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 2, 1);
        run(&mut registry, "a", "long", 500.0, now);
        // A free slot: no victim, whatever the urgency.
        assert_eq!(
            placed(&mut registry, "new", 1e9, None, now),
            Some(("a".into(), None))
        );
        run(&mut registry, "a", "long", 500.0, now);
        // Every slot busy: without an urgency nothing goes, nor without a tenth the work.
        assert!(registry.pick(None, None, now).is_none());
        assert_eq!(placed(&mut registry, "new", 60.0, None, now), None);
        let (executor, victim) = placed(&mut registry, "new", 40.0, None, now).unwrap();
        assert_eq!(executor, "a");
        assert!(victim.unwrap().starts_with("long/"));
        assert_eq!(registry.slots(), (2, 2));
    }

    #[test]
    fn a_far_slower_executor_gets_no_new_task_while_a_faster_one_is_connected() {
        let now = Instant::now();
        let mut registry = Registry::default();
        registry.set_slow_factor(3.0);
        executor(&mut registry, "slow", 2, 0);
        let median = Duration::from_millis(100);
        let changes = (0..10)
            .filter(|_| registry.record_task_time("slow", Duration::from_millis(600), median, now))
            .count();
        assert_eq!(changes, 1, "it goes on probation once");
        assert!(registry.get("slow").unwrap().on_probation);
        // Stages are sized for its one task at a time.
        assert_eq!(registry.planning_slots(), 1);
        // Alone, it is the cluster: it takes tasks in every slot.
        assert_eq!(
            placed(&mut registry, "q", 1.0, None, now).unwrap().0,
            "slow"
        );
        run(&mut registry, "slow", "q", 1.0, now);
        assert_eq!(
            placed(&mut registry, "q", 1.0, None, now).unwrap().0,
            "slow"
        );
        registry.get_mut("slow").unwrap().running.clear();
        executor(&mut registry, "fast", 1, 0);
        assert!(!registry.new_task_takers(now)(
            registry.get("slow").unwrap()
        ));
        assert_eq!(
            placed(&mut registry, "q", 1.0, Some("slow"), now)
                .unwrap()
                .0,
            "fast"
        );
        // With the fast one's slot busy, the task waits rather than go to the slow one.
        run(&mut registry, "fast", "q", 1.0, now);
        assert_eq!(placed(&mut registry, "q", 1.0, None, now), None);
        // What was measured fades: later it gets a task again, to show how it does, but
        // one at a time while it is on probation.
        let later = now + super::super::slowness::HALF_LIFE * 6;
        assert_eq!(
            placed(&mut registry, "q", 1.0, None, later).unwrap().0,
            "slow"
        );
        run(&mut registry, "slow", "q", 1.0, later);
        assert_eq!(placed(&mut registry, "q", 1.0, None, later), None);
        // Still slow: it stays on probation, and a few more slow tasks leave it out again.
        registry.get_mut("slow").unwrap().running.clear();
        registry.record_task_time("slow", Duration::from_millis(600), median, later);
        assert!(registry.get("slow").unwrap().on_probation);
        registry.record_task_time("slow", Duration::from_millis(600), median, later);
        assert!(!registry.new_task_takers(later)(
            registry.get("slow").unwrap()
        ));
        // Fast tasks take it off probation, and it takes tasks in every slot again.
        let much_later = later + super::super::slowness::HALF_LIFE * 3;
        for _ in 0..4 {
            registry.record_task_time("slow", median, median, much_later);
        }
        assert!(!registry.get("slow").unwrap().on_probation);
        assert_eq!(registry.planning_slots(), 3);
        run(&mut registry, "slow", "q", 1.0, much_later);
        assert_eq!(
            placed(&mut registry, "q", 1.0, None, much_later).unwrap().0,
            "slow"
        );
        // Off: never left out.
        registry.get_mut("slow").unwrap().running.clear();
        for _ in 0..10 {
            registry.record_task_time("slow", Duration::from_millis(600), median, now);
        }
        registry.set_slow_factor(0.0);
        assert_eq!(
            placed(&mut registry, "q", 1.0, None, now).unwrap().0,
            "slow"
        );
    }

    #[test]
    fn queries_of_similar_size_do_not_preempt_each_other() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 4);
        run(&mut registry, "a", "q21", 1800.0, now);
        // A third of the work left: not cheap enough.
        assert_eq!(placed(&mut registry, "new", 600.0, None, now), None);
        assert!(placed(&mut registry, "new", 150.0, None, now).is_some());
    }

    #[test]
    fn a_task_running_far_past_its_estimate_becomes_preemptible() {
        let pushed = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 1);
        // Its query looks nearly done (20 units), so a 35-unit query may not displace it.
        run(&mut registry, "a", "long", 20.0, pushed);
        assert_eq!(placed(&mut registry, "new", 35.0, None, pushed), None);
        // 100 ms are about 100 units of work: still not ten times 35.
        let later = pushed + Duration::from_millis(100);
        assert_eq!(placed(&mut registry, "new", 35.0, None, later), None);
        // After a second it is taken to have 1,000 units left.
        let much_later = pushed + Duration::from_secs(1);
        assert!(placed(&mut registry, "new", 35.0, None, much_later).is_some());
    }

    #[test]
    fn the_victim_is_the_least_urgent_running_task_of_another_query() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 3, 3);
        run(&mut registry, "a", "medium", 500.0, now);
        let longest = run(&mut registry, "a", "long", 5000.0, now);
        run(&mut registry, "a", "new", 5000.0, now);
        // "new"'s own task is costlier, but a query never suspends its own tasks.
        let victim = placed(&mut registry, "new", 1.0, None, now).unwrap().1;
        assert_eq!(victim.as_deref(), Some("long/1"));
        // A suspended task is no victim: the next one is the medium query's.
        suspend(&mut registry, "a", &longest);
        let victim = placed(&mut registry, "new", 1.0, None, now).unwrap().1;
        assert_eq!(victim.as_deref(), Some("medium/0"));
        // Where only the query's own tasks run, it can only wait.
        let mut own = Registry::default();
        executor(&mut own, "a", 2, 2);
        run(&mut own, "a", "new", 500.0, now);
        run(&mut own, "a", "new", 500.0, now);
        assert_eq!(placed(&mut own, "new", 1.0, None, now), None);
        assert!(placed(&mut own, "other", 1.0, None, now).is_some());
    }

    #[test]
    fn suspended_tasks_resume_most_urgent_first_once_a_slot_frees() {
        let now = Instant::now();
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 2);
        let long = run(&mut registry, "a", "long", 5000.0, now);
        suspend(&mut registry, "a", &long);
        let medium = run(&mut registry, "a", "medium", 400.0, now);
        suspend(&mut registry, "a", &medium);
        let short = run(&mut registry, "a", "short", 1.0, now);
        let entry = registry.get("a").unwrap();
        // The short task holds the one slot: nothing resumes, and the room is used up.
        assert_eq!(entry.to_resume(now), None);
        assert_eq!(entry.free_slots(), 0);
        assert_eq!(placed(&mut registry, "new", 0.001, None, now), None);
        registry.get_mut("a").unwrap().running.remove(&short);
        assert_eq!(registry.get("a").unwrap().to_resume(now), Some(medium));
        // Suspended tasks keep their claim on the slots: no new task takes them.
        assert!(!registry.has_free_slot());
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
                .map(|(e, _)| e.location.executor_id.clone())
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
        // Every slot busy: a cheap task preempts at its home while the home has room for
        // another suspended task, though "a" would win the tie otherwise.
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
}
