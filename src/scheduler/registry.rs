//! The executor registry: who is connected, their free slots and the stream to each.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

use super::query::TaskRef;
use crate::proto::SchedulerMessage;
use crate::shuffle::MapLocation;

/// By default a task preempts only when its query has under 1/10 of the remaining work of
/// the task it displaces: cheap queries jump ahead of long ones, while long queries of
/// comparable size do not keep suspending each other.
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
    /// True when a task of this urgency may displace `other`: it outranks it and has
    /// under 1/`cost_ratio` of its remaining work.
    pub fn preempts(&self, other: &Urgency, cost_ratio: f64) -> bool {
        self.rank < other.rank && self.cost * cost_ratio < other.cost
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
    pub running: HashMap<(Arc<str>, TaskRef), Urgency>,
    sender: ExecutorSender,
    /// Connection generation, so a stale stream's end does not remove a newer connection.
    pub generation: u64,
}

impl ExecutorEntry {
    /// Slots not running a task.
    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.running.len() as u32)
    }

    /// True when a task of `urgency` may run here at once although every slot is busy:
    /// the executor has room for one more task, and the task outranks the least urgent
    /// of those holding a slot (which the executor then suspends) and has under
    /// 1/`cost_ratio` of its remaining work.
    pub fn admits_urgent(&self, urgency: Urgency, cost_ratio: f64) -> bool {
        if self.running.len() >= (self.slots + self.preempt_slots) as usize {
            return false;
        }
        let mut held: Vec<Urgency> = self.running.values().copied().collect();
        held.sort_by(|a, b| a.rank.total_cmp(&b.rank));
        let Some(victim) = held.get(self.slots as usize - 1) else {
            return true;
        };
        urgency.preempts(victim, cost_ratio)
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
    preempt_cost_ratio: f64,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            executors: HashMap::new(),
            next_generation: 0,
            preempt_cost_ratio: DEFAULT_PREEMPT_COST_RATIO,
        }
    }
}

impl Registry {
    /// Preempting tasks need under 1/`ratio` of the remaining work of the task they
    /// displace.
    pub fn set_preempt_cost_ratio(&mut self, ratio: f64) {
        self.preempt_cost_ratio = ratio;
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

    /// Where a task goes: the executor with the most free slots; when no slot is free
    /// and the task's `urgency` is given (the policy preempts), the executor running
    /// the fewest tasks among those where it may preempt a running one.
    pub fn pick(&mut self, urgency: Option<Urgency>) -> Option<&mut ExecutorEntry> {
        if self.executors.values().any(|e| e.free_slots() > 0) {
            return self.most_free();
        }
        let urgency = urgency?;
        let ratio = self.preempt_cost_ratio;
        self.executors
            .values_mut()
            .filter(|e| e.admits_urgent(urgency, ratio))
            .min_by_key(|e| (e.running.len(), e.generation))
    }

    /// True when a task of `urgency` may displace a task running on any executor: it is
    /// then urgent, and runs at normal OS priority while that work runs at a lower one.
    pub fn is_urgent(&self, urgency: &Urgency) -> bool {
        self.executors
            .values()
            .flat_map(|e| e.running.values())
            .any(|running| urgency.preempts(running, self.preempt_cost_ratio))
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

    fn executor(registry: &mut Registry, id: &str, slots: u32, preempt_slots: u32) {
        let (sender, _receiver) = tokio::sync::mpsc::unbounded_channel();
        let location = MapLocation {
            executor_id: id.into(),
            flight_address: String::new(),
        };
        registry.register(location, slots, preempt_slots, sender);
    }

    fn urgency(rank: f64, cost: f64) -> Urgency {
        Urgency { rank, cost }
    }

    fn run(registry: &mut Registry, id: &str, query: &str, rank: f64, cost: f64) {
        let entry = registry.get_mut(id).unwrap();
        let task = TaskRef {
            stage: 0,
            partition: entry.running.len() as u32,
        };
        entry
            .running
            .insert((query.into(), task), urgency(rank, cost));
    }

    #[test]
    fn a_cheap_task_preempts_only_where_it_outranks_a_running_one() {
        let mut registry = Registry::default();
        executor(&mut registry, "a", 2, 1);
        run(&mut registry, "a", "long", 500.0, 500.0);
        assert_eq!(registry.pick(None).unwrap().location.executor_id, "a");
        run(&mut registry, "a", "long", 500.0, 500.0);
        // Every slot busy: without an urgency nothing goes, nor when it does not outrank.
        assert!(registry.pick(None).is_none());
        assert!(registry.pick(Some(urgency(500.0, 10.0))).is_none());
        let cheap = Some(urgency(10.0, 10.0));
        assert_eq!(registry.pick(cheap).unwrap().location.executor_id, "a");
        run(&mut registry, "a", "short", 10.0, 10.0);
        // The preemption room is used up.
        assert!(registry.pick(Some(urgency(1.0, 1.0))).is_none());
        // Cheap next to the long tasks, not next to the short one.
        assert!(registry.is_urgent(&urgency(5.0, 5.0)));
        assert!(!registry.is_urgent(&urgency(600.0, 5.0)));
        assert!(!registry.is_urgent(&urgency(5.0, 200.0)));
        assert_eq!(registry.slots(), (2, 2));
    }

    #[test]
    fn queries_of_similar_size_do_not_preempt_each_other() {
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 4);
        run(&mut registry, "a", "q21", 1800.0, 1800.0);
        // Ahead by rank, but with a third of the work left: not cheap enough.
        assert!(registry.pick(Some(urgency(600.0, 600.0))).is_none());
        assert!(registry.pick(Some(urgency(150.0, 150.0))).is_some());
    }

    #[test]
    fn no_preemption_past_tasks_at_least_as_urgent() {
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 4);
        run(&mut registry, "a", "long", 900.0, 900.0);
        run(&mut registry, "a", "short", 10.0, 20.0);
        // The short task holds the slot; the long one waits already.
        assert!(registry.pick(Some(urgency(10.0, 1.0))).is_none());
        assert!(registry.pick(Some(urgency(20.0, 1.0))).is_none());
        assert!(registry.pick(Some(urgency(5.0, 1.0))).is_some());
    }

    #[test]
    fn urgent_tasks_spread_over_executors() {
        let mut registry = Registry::default();
        executor(&mut registry, "a", 1, 2);
        executor(&mut registry, "b", 1, 2);
        run(&mut registry, "a", "long", 500.0, 500.0);
        run(&mut registry, "b", "long", 500.0, 500.0);
        run(&mut registry, "a", "short", 10.0, 20.0);
        let cheaper = Some(urgency(5.0, 1.0));
        assert_eq!(registry.pick(cheaper).unwrap().location.executor_id, "b");
        // An executor with preemption off takes nothing beyond its slots.
        executor(&mut registry, "c", 1, 0);
        run(&mut registry, "c", "long", 500.0, 500.0);
        run(&mut registry, "b", "short", 10.0, 20.0);
        let cheapest = Some(urgency(1.0, 1.0));
        assert_eq!(registry.pick(cheapest).unwrap().location.executor_id, "a");
    }
}
