//! The scheduler's durable state: what a restarted scheduler needs to resume every query.
//!
//! One small trait, [`StateStore`], holds submitted queries (their stage plans, owner,
//! settings and policy inputs), finished tasks (where their output is, or a small result
//! itself) and how queries ended. The scheduler records each change through a
//! [`Journal`]: a thread of its own writes the changes in the order they were made, many
//! to a transaction, so the state's lock is never held across a write. A submit is
//! answered only once its query is written ([`Journal::flushed`]); a finished task is
//! written within one batch, and a crash inside that window runs the task again.

mod embedded;
mod etcd;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;
use tracing::error;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdLocation, EtcdStore, Leadership};

use crate::proto::{StoredQuery, StoredTask};

/// Changes written in one transaction at most; more wait for the next.
const MAX_BATCH: usize = 4096;

/// Errors of a state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The embedded store's file could not be opened or written.
    #[error("scheduler state in {path}: {message}")]
    Embedded {
        /// The store's file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A stored record could not be decoded.
    #[error("scheduler state record {key}: {source}")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why.
        source: prost::DecodeError,
    },
    /// etcd could not be reached, refused a request, or another scheduler leads now.
    #[error("scheduler state in {location}: {message}")]
    Etcd {
        /// The store.
        location: String,
        /// What failed.
        message: String,
    },
    /// A batch of changes could not be written.
    #[error("writing the scheduler state: {0}")]
    Write(String),
    /// The journal's writer has stopped.
    #[error("the scheduler state journal has stopped")]
    Stopped,
}

/// One change to the durable state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A query was submitted, or its record changed (it ended; its result was freed).
    PutQuery(StoredQuery),
    /// A task finished (replaces an earlier record of the same task).
    PutTask(StoredTask),
    /// The task records of one stage of a query are no longer needed (its result was
    /// fetched or freed).
    DropTasks {
        /// The query.
        query_id: String,
        /// The stage.
        stage_id: u32,
    },
    /// The query and its tasks are forgotten.
    Forget(String),
}

/// Everything a store holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stored {
    /// The queries, in submission order.
    pub queries: Vec<StoredQuery>,
    /// Finished tasks, of every query.
    pub tasks: Vec<StoredTask>,
}

/// Where the scheduler keeps its state.
pub trait StateStore: Send + 'static {
    /// Everything stored.
    fn load(&mut self) -> Result<Stored, StateError>;
    /// Writes `changes` atomically and durably, in order.
    fn write(&mut self, changes: &[Change]) -> Result<(), StateError>;
}

/// What goes to the journal's writer thread.
enum Entry {
    Change(Box<Change>),
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<Result<(), StateError>>),
}

/// The sending end of the journal: cheap to use under the scheduler's lock.
#[derive(Debug, Clone)]
pub struct Journal {
    entries: mpsc::Sender<Entry>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Change(change) => change.fmt(f),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Journal {
    /// Starts the writer thread over `store`.
    pub fn start(store: Box<dyn StateStore>) -> Self {
        let (entries, received) = mpsc::channel();
        std::thread::Builder::new()
            .name("baton-state".into())
            .spawn(move || write_all(store, received))
            .expect("spawn the scheduler state writer");
        Self { entries }
    }

    /// Queues a change; it is written with the next batch.
    pub fn record(&self, change: Change) {
        if self.entries.send(Entry::Change(Box::new(change))).is_err() {
            metrics::counter!("baton_state_write_errors_total").increment(1);
        }
    }

    /// A receiver answered once every change recorded so far is written.
    pub fn flushed(&self) -> oneshot::Receiver<Result<(), StateError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Entry::Flush(tx))) = self.entries.send(Entry::Flush(tx)) {
            let _ = tx.send(Err(StateError::Stopped));
        }
        rx
    }
}

/// The writer thread: takes what has queued up (at most [`MAX_BATCH`] changes), writes
/// it in one transaction, answers the flushes among it, and goes on until every
/// [`Journal`] is dropped. A write that fails is logged and answered to its flushes;
/// the changes of that batch are lost, so a restart runs their tasks again.
fn write_all(mut store: Box<dyn StateStore>, received: mpsc::Receiver<Entry>) {
    while let Ok(first) = received.recv() {
        let mut changes = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(entry) = next.take() {
            match entry {
                Entry::Change(change) => changes.push(*change),
                Entry::Flush(tx) => flushes.push(tx),
            }
            if changes.len() < MAX_BATCH {
                next = received.try_recv().ok();
            }
        }
        let started = std::time::Instant::now();
        let written = if changes.is_empty() {
            Ok(())
        } else {
            store.write(&changes)
        };
        metrics::histogram!("baton_state_write_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("baton_state_changes_written_total").increment(changes.len() as u64);
        let failure = written.as_ref().err().map(ToString::to_string);
        if let Some(message) = &failure {
            metrics::counter!("baton_state_write_errors_total").increment(1);
            error!(error = %message, changes = changes.len(), "writing the scheduler state failed");
        }
        for tx in flushes {
            let answer = match &failure {
                None => Ok(()),
                Some(message) => Err(StateError::Write(message.clone())),
            };
            let _ = tx.send(answer);
        }
    }
}

/// Where a scheduler keeps its state, as `--state` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    /// Memory only: a restart loses every query.
    Memory,
    /// A file in `--state-dir` on this host.
    Embedded,
    /// etcd, shared by a scheduler and its standbys (one leads at a time).
    Etcd(EtcdLocation),
}

impl std::str::FromStr for StateLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(Self::Memory),
            "embedded" => Ok(Self::Embedded),
            url if url.starts_with("etcd://") => Ok(Self::Etcd(url.parse()?)),
            other => Err(format!(
                "unknown state store {other:?}: expected embedded, memory or etcd://HOST:PORT/PREFIX"
            )),
        }
    }
}

/// An opened state store, and for etcd what this scheduler knows of its leadership.
pub type Opened = (Box<dyn StateStore>, Option<Leadership>);

/// Opens the store `location` names (in `dir` for the embedded one); None for memory.
/// For etcd, this waits until this scheduler (serving at `address`, on a lease of
/// `lease`) is elected to lead, with `active` on the address of the one that leads.
pub async fn open(
    location: &StateLocation,
    dir: &Path,
    address: &str,
    lease: std::time::Duration,
    active: &tokio::sync::watch::Sender<Option<String>>,
) -> Result<Option<Opened>, StateError> {
    match location {
        StateLocation::Memory => Ok(None),
        StateLocation::Embedded => Ok(Some((Box::new(EmbeddedStore::open(dir)?), None))),
        StateLocation::Etcd(etcd) => {
            let (store, leadership) = EtcdStore::open(etcd, address, lease, active).await?;
            Ok(Some((Box::new(store), Some(leadership))))
        }
    }
}
