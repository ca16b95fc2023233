//! Shuffle: how one stage's output reaches the next.
//!
//! A stage ends in a [`ShuffleWriterExec`], which splits its input into output partitions
//! and puts them in the executor's [`ShuffleStore`] (memory first, Arrow IPC files past a
//! budget). A consumer stage starts at a [`ShuffleReaderExec`], which reads its partition
//! from every map task of the producer: straight from the store when the map task ran on
//! the same executor, with Arrow Flight `do_get` otherwise ([`fetch`]).

mod deadline;
mod env;
pub mod fetch;
mod reader;
mod store;
mod writer;

pub use env::{MapLocation, TaskEnv};
pub use fetch::UnreadableOutput;
pub use reader::{ReadMode, ShuffleReaderExec};
pub use store::{ShuffleKey, ShuffleStore, StoreError};
pub use writer::{ShuffleWriterExec, write_stats_schema};
