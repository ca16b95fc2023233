//! Client sessions. Each session plans its SQL in a DataFusion session of its own: `SET`
//! changes only its settings, and tables, views and schemas it creates (where DDL is
//! allowed) live in its own layer over the scheduler's catalog, seen only there and
//! gone with it. The catalog itself is shared and read-only.
//!
//! A session is named by its client (Baton's client sends one id per connection; a
//! Flight SQL client's login token or `x-baton-session` header names one) and belongs to
//! the user who opened it: another user's submission under the same id gets a session
//! of its own. Sessions idle for an hour are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::SessionContext;

/// A session unused for this long is dropped with what it created.
const SESSION_IDLE: Duration = Duration::from_secs(3600);

/// Sessions held at most; past it, the least recently used one is dropped.
const MAX_SESSIONS: usize = 10_000;

/// Who submits, and in which of their sessions.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The user; the query belongs to them.
    pub owner: Arc<str>,
    /// Their session's id; None: the statement runs in a session of its own.
    pub session: Option<String>,
}

impl Origin {
    /// `owner`'s statement outside any session.
    pub fn sessionless(owner: Arc<str>) -> Self {
        Self {
            owner,
            session: None,
        }
    }
}

struct OpenSession {
    context: SessionContext,
    last_used: Instant,
}

/// The open sessions over one shared catalog.
pub struct Sessions {
    base: SessionContext,
    open: Mutex<HashMap<(Arc<str>, String), OpenSession>>,
}

impl Sessions {
    /// Sessions whose settings start as `base`'s and that see its catalog.
    pub fn new(base: SessionContext) -> Self {
        Self {
            base,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The DataFusion session `origin`'s SQL is planned in: its open session, opened
    /// on first use; a fresh one when it names none.
    pub fn context(&self, origin: &Origin) -> SessionContext {
        let Some(id) = &origin.session else {
            return self.fresh();
        };
        let now = Instant::now();
        let mut open = self.open.lock().expect("sessions lock");
        open.retain(|_, session| now.duration_since(session.last_used) < SESSION_IDLE);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, session)| session.last_used)
                .map(|(key, _)| key.clone())
        {
            open.remove(&oldest);
        }
        let session = open
            .entry((origin.owner.clone(), id.clone()))
            .or_insert_with(|| OpenSession {
                context: self.fresh(),
                last_used: now,
            });
        session.last_used = now;
        session.context.clone()
    }

    /// Closes `owner`'s session `id`, dropping what it created; false when none was open.
    pub fn close(&self, owner: &Arc<str>, id: &str) -> bool {
        self.open
            .lock()
            .expect("sessions lock")
            .remove(&(owner.clone(), id.to_string()))
            .is_some()
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.open.lock().expect("sessions lock").len()
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new session: the base's settings and functions, a private layer over each of
    /// the base's schemas.
    fn fresh(&self) -> SessionContext {
        let catalogs = MemoryCatalogProviderList::new();
        for catalog_name in self.base.catalog_names() {
            let Some(shared) = self.base.catalog(&catalog_name) else {
                continue;
            };
            let layered = MemoryCatalogProvider::new();
            for schema_name in shared.schema_names() {
                if let Some(schema) = shared.schema(&schema_name) {
                    let layer = Arc::new(SessionSchema {
                        own: MemorySchemaProvider::new(),
                        shared: schema,
                    });
                    // A fresh catalog takes every schema.
                    let _ = layered.register_schema(&schema_name, layer);
                }
            }
            catalogs.register_catalog(catalog_name, Arc::new(layered));
        }
        let state = SessionStateBuilder::new_from_existing(self.base.state())
            .with_catalog_list(Arc::new(catalogs))
            .build();
        SessionContext::new_with_state(state)
    }
}

/// A session's layer over a shared schema: tables it registers are its own; the shared
/// ones are seen, never replaced or dropped.
#[derive(Debug)]
struct SessionSchema {
    own: MemorySchemaProvider,
    shared: Arc<dyn SchemaProvider>,
}

#[async_trait]
impl SchemaProvider for SessionSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.shared.table_names();
        names.extend(self.own.table_names());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.own.table(name).await? {
            Some(table) => Ok(Some(table)),
            None => self.shared.table(name).await,
        }
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.shared.table_exist(&name) {
            return Err(read_only(&name));
        }
        self.own.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.own.table_exist(name) {
            self.own.deregister_table(name)
        } else if self.shared.table_exist(name) {
            Err(read_only(name))
        } else {
            Ok(None)
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.own.table_exist(name) || self.shared.table_exist(name)
    }
}

/// Refuses a `DROP TABLE` or `DROP VIEW` of a table of the shared catalog, which
/// DataFusion would otherwise report as missing.
pub fn refuse_catalog_drop(session: &SessionContext, plan: &LogicalPlan) -> Result<()> {
    let name = match plan {
        LogicalPlan::Ddl(DdlStatement::DropTable(drop)) => &drop.name,
        LogicalPlan::Ddl(DdlStatement::DropView(drop)) => &drop.name,
        _ => return Ok(()),
    };
    let state = session.state();
    let defaults = &state.config_options().catalog;
    let resolved = name
        .clone()
        .resolve(&defaults.default_catalog, &defaults.default_schema);
    let layer = state
        .catalog_list()
        .catalog(&resolved.catalog)
        .and_then(|catalog| catalog.schema(&resolved.schema));
    let shared_only = layer.is_some_and(|schema| {
        schema.downcast_ref::<SessionSchema>().is_some_and(|layer| {
            !layer.own.table_exist(&resolved.table) && layer.shared.table_exist(&resolved.table)
        })
    });
    if shared_only {
        Err(read_only(&resolved.table))
    } else {
        Ok(())
    }
}

fn read_only(name: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "{name} is a table of the scheduler's catalog, which sessions cannot change"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn base() -> SessionContext {
        let base = SessionContext::new();
        base.sql("create view shared as select 1 as x")
            .await
            .unwrap();
        base
    }

    fn origin(owner: &str, session: &str) -> Origin {
        Origin {
            owner: owner.into(),
            session: Some(session.into()),
        }
    }

    async fn setting(ctx: &SessionContext) -> usize {
        ctx.state().config().batch_size()
    }

    #[tokio::test]
    async fn a_sessions_settings_and_tables_are_its_own() {
        let sessions = Sessions::new(base().await);
        let a = sessions.context(&origin("alice", "1"));
        a.sql("set datafusion.execution.batch_size = 1234")
            .await
            .unwrap();
        a.sql("create view mine as select 2 as y").await.unwrap();
        // The same session sees both; another session, or alice's other one, neither.
        let again = sessions.context(&origin("alice", "1"));
        assert_eq!(setting(&again).await, 1234);
        assert!(again.table_exist("mine").unwrap());
        for other in [origin("alice", "2"), origin("bob", "1")] {
            let other = sessions.context(&other);
            assert_eq!(setting(&other).await, 8192);
            assert!(!other.table_exist("mine").unwrap());
            assert!(other.table_exist("shared").unwrap());
        }
        assert!(
            !sessions
                .context(&Origin::sessionless("alice".into()))
                .table_exist("mine")
                .unwrap()
        );
        // Closed, the session and its view are gone.
        assert!(sessions.close(&"alice".into(), "1"));
        let reopened = sessions.context(&origin("alice", "1"));
        assert!(!reopened.table_exist("mine").unwrap());
        assert_eq!(setting(&reopened).await, 8192);
    }

    #[tokio::test]
    async fn the_shared_catalog_cannot_be_changed_from_a_session() {
        let sessions = Sessions::new(base().await);
        let a = sessions.context(&origin("alice", "1"));
        let dropped = crate::scheduler::guard::Guard {
            allow_ddl: true,
            ..Default::default()
        }
        .plan_sql(&a, "drop view shared", None)
        .await;
        let dropped = dropped.unwrap_err().to_string();
        assert!(dropped.contains("cannot change"), "{dropped}");
        let replaced = a.sql("create view shared as select 3 as z").await;
        assert!(replaced.is_err());
        assert!(
            sessions
                .context(&origin("bob", "1"))
                .table_exist("shared")
                .unwrap()
        );
    }
}
