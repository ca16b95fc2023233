//! The embedded state store: one redb file in the scheduler's `--state-dir`, so that a
//! scheduler restarted on the same host resumes its queries.

use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Change, StateError, StateStore, Stored};
use crate::proto::{StoredQuery, StoredTask};

/// Queries by id.
const QUERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("queries");

/// Finished tasks by (query, stage, partition).
const TASKS: TableDefinition<(&str, u32, u32), &[u8]> = TableDefinition::new("tasks");

/// The store file's name in the state directory.
const FILE: &str = "scheduler.redb";

/// A redb file holding the scheduler's state.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Only one scheduler may have it open: a
    /// second one is refused.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(FILE);
        let failed = |message: String| StateError::Embedded {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| failed(format!("creating the directory: {e}")))?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                failed("another scheduler has it open".into())
            }
            other => failed(other.to_string()),
        })?;
        let store = Self { db, path };
        // Both tables exist from the start, so a read never meets a missing one.
        store.write_changes(&[])?;
        Ok(store)
    }

    fn error(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Embedded {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn write_changes(&self, changes: &[Change]) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut queries = txn.open_table(QUERIES).map_err(|e| self.error(e))?;
            let mut tasks = txn.open_table(TASKS).map_err(|e| self.error(e))?;
            for change in changes {
                match change {
                    Change::PutQuery(query) => {
                        queries
                            .insert(query.query_id.as_str(), query.encode_to_vec().as_slice())
                            .map_err(|e| self.error(e))?;
                    }
                    Change::PutTask(task) => {
                        let key = (task.query_id.as_str(), task.stage_id, task.partition);
                        tasks
                            .insert(key, task.encode_to_vec().as_slice())
                            .map_err(|e| self.error(e))?;
                    }
                    Change::DropTasks { query_id, stage_id } => {
                        let range = (query_id.as_str(), *stage_id, 0)
                            ..=(query_id.as_str(), *stage_id, u32::MAX);
                        tasks
                            .retain_in(range, |_, _| false)
                            .map_err(|e| self.error(e))?;
                    }
                    Change::Forget(query_id) => {
                        queries
                            .remove(query_id.as_str())
                            .map_err(|e| self.error(e))?;
                        let range =
                            (query_id.as_str(), 0, 0)..=(query_id.as_str(), u32::MAX, u32::MAX);
                        tasks
                            .retain_in(range, |_, _| false)
                            .map_err(|e| self.error(e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.error(e))
    }
}

impl StateStore for EmbeddedStore {
    fn load(&mut self) -> Result<Stored, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let mut stored = Stored::default();
        let queries = txn.open_table(QUERIES).map_err(|e| self.error(e))?;
        for entry in queries.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            let query =
                StoredQuery::decode(value.value()).map_err(|source| StateError::Corrupt {
                    key: format!("query {}", key.value()),
                    source,
                })?;
            stored.queries.push(query);
        }
        stored.queries.sort_by_key(|q| q.seq);
        let tasks = txn.open_table(TASKS).map_err(|e| self.error(e))?;
        for entry in tasks.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            let task = StoredTask::decode(value.value()).map_err(|source| {
                let (query, stage, partition) = key.value();
                StateError::Corrupt {
                    key: format!("task {query}/{stage}/{partition}"),
                    source,
                }
            })?;
            stored.tasks.push(task);
        }
        Ok(stored)
    }

    fn write(&mut self, changes: &[Change]) -> Result<(), StateError> {
        self.write_changes(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: &str, seq: u64) -> StoredQuery {
        StoredQuery {
            query_id: id.into(),
            label: format!("select {seq}"),
            seq,
            ..StoredQuery::default()
        }
    }

    fn task(query: &str, stage: u32, partition: u32, executor: &str) -> StoredTask {
        StoredTask {
            query_id: query.into(),
            stage_id: stage,
            partition,
            executor_id: executor.into(),
            ..StoredTask::default()
        }
    }

    #[test]
    fn what_was_written_is_loaded_again_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = EmbeddedStore::open(dir.path()).unwrap();
            StateStore::write(
                &mut store,
                &[
                    Change::PutQuery(query("b", 2)),
                    Change::PutQuery(query("a", 1)),
                    Change::PutTask(task("a", 0, 0, "e1")),
                    Change::PutTask(task("a", 0, 1, "e1")),
                    Change::PutTask(task("a", 1, 0, "e1")),
                    Change::PutTask(task("b", 0, 0, "e2")),
                ],
            )
            .unwrap();
            // A later record of a task replaces the earlier one.
            StateStore::write(
                &mut store,
                &[
                    Change::PutTask(task("a", 0, 1, "e2")),
                    Change::DropTasks {
                        query_id: "a".into(),
                        stage_id: 1,
                    },
                    Change::Forget("b".into()),
                ],
            )
            .unwrap();
        }
        let mut store = EmbeddedStore::open(dir.path()).unwrap();
        let stored = store.load().unwrap();
        assert_eq!(stored.queries, vec![query("a", 1)]);
        assert_eq!(
            stored.tasks,
            vec![task("a", 0, 0, "e1"), task("a", 0, 1, "e2")]
        );
    }

    #[test]
    fn a_second_scheduler_cannot_open_a_store_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path()).unwrap();
        let second = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
        assert!(second.contains("another scheduler has it open"), "{second}");
    }

    #[test]
    fn a_corrupt_record_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path()).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(QUERIES)
            .unwrap()
            .insert("x", [0xff_u8, 0xff, 0xff].as_slice())
            .unwrap();
        txn.commit().unwrap();
        let error = store.load().unwrap_err().to_string();
        assert!(error.contains("query x"), "{error}");
    }
}
