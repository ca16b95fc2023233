//! The executor registry: who is connected, their free slots and the stream to each.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

use super::query::TaskRef;
use crate::proto::SchedulerMessage;
use crate::shuffle::MapLocation;

/// The sending half of an executor's stream.
pub type ExecutorSender = UnboundedSender<Result<SchedulerMessage, Status>>;

/// One connected executor.
#[derive(Debug)]
pub struct ExecutorEntry {
    /// Where its shuffle output is served.
    pub location: MapLocation,
    /// Slots it offered.
    pub slots: u32,
    /// Tasks it runs now.
    pub running: HashSet<(Arc<str>, TaskRef)>,
    sender: ExecutorSender,
    /// Connection generation, so a stale stream's end does not remove a newer connection.
    pub generation: u64,
}

impl ExecutorEntry {
    /// Slots not running a task.
    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.running.len() as u32)
    }

    /// Pushes a message down the executor's stream; false when the stream is gone.
    pub fn send(&self, message: SchedulerMessage) -> bool {
        self.sender.send(Ok(message)).is_ok()
    }
}

/// Connected executors by id.
#[derive(Debug, Default)]
pub struct Registry {
    executors: HashMap<String, ExecutorEntry>,
    next_generation: u64,
}

impl Registry {
    /// Adds (or replaces) an executor; returns the replaced entry and the new generation.
    pub fn register(
        &mut self,
        location: MapLocation,
        slots: u32,
        sender: ExecutorSender,
    ) -> (Option<ExecutorEntry>, u64) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let entry = ExecutorEntry {
            location: location.clone(),
            slots,
            running: HashSet::new(),
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

    /// Total and busy slots.
    pub fn slots(&self) -> (u32, u32) {
        self.executors.values().fold((0, 0), |(total, busy), e| {
            (total + e.slots, busy + e.running.len() as u32)
        })
    }
}
