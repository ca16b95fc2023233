//! What a scheduler runs for its clients. By default only queries: `SELECT`, `WITH`,
//! `VALUES`, `EXPLAIN`, `SHOW`, `DESCRIBE`. DDL (`CREATE EXTERNAL TABLE … LOCATION
//! '/etc/passwd'`), DML and `COPY … TO` would read or write files on the cluster's hosts,
//! so they are refused before anything runs. `--allow-ddl` lets DDL, DML and `COPY`
//! through, their file locations under the `--data-prefix` the operator lists. `SET` and
//! `RESET` change only the client's session, and not the settings distributed plans
//! depend on; `PREPARE` (checked as what it prepares), `EXECUTE` and `DEALLOCATE` keep
//! statements in the session.
//!
//! A client may also submit a physical plan it planned itself; it may scan only the files
//! of the tables the scheduler knows (its catalog's, and under `--data-prefix`), and may
//! not contain Baton's own shuffle operators, which name stages of the scheduler's making.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::join_filters::{KeySummaryExec, ProbeFilterExec};
use crate::shuffle::{ShuffleReaderExec, ShuffleWriterExec};

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A statement kind the scheduler does not run for clients.
    #[error(
        "{0}; this scheduler runs queries only (an operator may allow DDL, DML and COPY with \
         --allow-ddl)"
    )]
    NotAQuery(String),
    /// Transactions.
    #[error(
        "{0} statements are not supported; `SET`, `RESET`, `PREPARE`, `EXECUTE` and \
         `DEALLOCATE` are (per session)"
    )]
    Statement(String),
    /// A file location outside the operator's prefixes.
    #[error("location {location:?} is outside the data prefixes this scheduler allows ({allowed})")]
    Location {
        /// The location.
        location: String,
        /// The allowed prefixes, listed.
        allowed: String,
    },
    /// A client plan that reads files no table of the scheduler's has.
    #[error("the plan reads {0}, which is no file of a table this scheduler knows")]
    File(String),
    /// A client plan with Baton's own shuffle operators.
    #[error("the plan contains {0}, which only the scheduler's own stage planning may use")]
    Internal(&'static str),
}

/// What SQL and which plans a scheduler accepts from clients.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// DDL, DML and COPY allowed (their locations under `prefixes`).
    pub allow_ddl: bool,
    /// Where DDL and COPY may point, and what tables created there may read: URL or
    /// absolute path prefixes.
    pub prefixes: Vec<String>,
    /// The data the catalog's tables read (files, directories or URL prefixes), which
    /// client plans may scan.
    pub tables: Vec<String>,
}

impl Guard {
    /// Plans `sql` in `session` if it is something this scheduler runs; DDL allowed
    /// here takes effect at once (as DataFusion's `sql` does).
    pub async fn plan_sql(
        &self,
        session: &SessionContext,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<DataFrame, DataFusionError> {
        let plan = session.state().create_logical_plan(sql).await?;
        self.check_sql(&plan).map_err(refused)?;
        super::sessions::refuse_catalog_drop(session, &plan)?;
        let plan = match params {
            Some(values) => plan.with_param_values(ParamValues::from(values))?,
            None => plan,
        };
        session.execute_logical_plan(plan).await
    }

    /// Refuses `plan` when it is nothing this scheduler runs.
    pub fn check_sql(&self, plan: &LogicalPlan) -> Result<(), Refused> {
        match plan {
            // Settings are the session's (distributed plans keep some of them off:
            // `config::plan_for_distribution`).
            LogicalPlan::Statement(Statement::SetVariable(_) | Statement::ResetVariable(_)) => {
                return Ok(());
            }
            // SQL prepared statements live in the session; what one runs is checked
            // when it is prepared.
            LogicalPlan::Statement(Statement::Prepare(prepare)) => {
                return self.check_sql(&prepare.input);
            }
            LogicalPlan::Statement(Statement::Execute(_) | Statement::Deallocate(_)) => {
                return Ok(());
            }
            LogicalPlan::Statement(statement) => {
                return Err(Refused::Statement(statement.name().to_string()));
            }
            _ => {}
        }
        let options = SQLOptions::new()
            .with_allow_ddl(self.allow_ddl)
            .with_allow_dml(self.allow_ddl)
            .with_allow_statements(false);
        options
            .verify_plan(plan)
            .map_err(|e| Refused::NotAQuery(e.strip_backtrace()))?;
        let mut outside = None;
        let _ = plan.apply_with_subqueries(|node| {
            let locations: Vec<&str> = match node {
                LogicalPlan::Ddl(DdlStatement::CreateExternalTable(table)) => {
                    table.locations.iter().map(String::as_str).collect()
                }
                LogicalPlan::Copy(copy) => vec![copy.output_url.as_str()],
                _ => Vec::new(),
            };
            if let Some(location) = locations.into_iter().find(|l| !self.under_prefix(l)) {
                outside = Some(location.to_string());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        match outside {
            Some(location) => Err(Refused::Location {
                location,
                allowed: if self.prefixes.is_empty() {
                    "none: give --data-prefix".into()
                } else {
                    self.prefixes.join(", ")
                },
            }),
            None => Ok(()),
        }
    }

    /// True when `location` lies under one of the operator's prefixes. A local path is
    /// taken as DataFusion reads it: a relative one from the working directory, and
    /// `..` segments resolved; a URL with a `..` segment never is.
    fn under_prefix(&self, location: &str) -> bool {
        let resolved = if location.contains("://") {
            if location.split('/').any(|segment| segment == "..") {
                return false;
            }
            location.to_string()
        } else {
            let Ok(cwd) = std::env::current_dir() else {
                return false;
            };
            let mut path = std::path::PathBuf::new();
            for part in cwd.join(location).components() {
                match part {
                    std::path::Component::ParentDir => {
                        path.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => path.push(other),
                }
            }
            path.display().to_string()
        };
        self.prefixes.iter().any(|p| within(&resolved, p))
    }

    /// Checks a client's decoded physical plan: only files of known tables, no Baton
    /// shuffle or join-filter operators.
    pub fn check_plan(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<(), DataFusionError> {
        let mut problem = None;
        let _ = plan.apply(|node| {
            if node.downcast_ref::<ShuffleReaderExec>().is_some() {
                problem = Some(Refused::Internal("a shuffle reader"));
            } else if node.downcast_ref::<ShuffleWriterExec>().is_some() {
                problem = Some(Refused::Internal("a shuffle writer"));
            } else if node.is::<KeySummaryExec>() || node.is::<ProbeFilterExec>() {
                // They name join filters of the scheduler's making.
                problem = Some(Refused::Internal("a join filter"));
            } else if let Some(file) = self.unknown_file(node.as_ref()) {
                problem = Some(Refused::File(file));
            }
            Ok(if problem.is_some() {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        });
        problem.map_or(Ok(()), |p| Err(refused(p)))
    }

    /// A file `node` scans that belongs to no known table, if any.
    fn unknown_file(&self, node: &dyn ExecutionPlan) -> Option<String> {
        let source = node.downcast_ref::<DataSourceExec>()?;
        let scan = source.data_source().downcast_ref::<FileScanConfig>()?;
        // "file:///" or "s3://bucket/", then the object's path within the store.
        let store = scan.object_store_url.as_str();
        let store = if store.ends_with('/') {
            store.to_string()
        } else {
            format!("{store}/")
        };
        scan.file_groups
            .iter()
            .flat_map(|group| group.iter())
            .map(|file| format!("{store}{}", file.object_meta.location))
            .find(|url| {
                let known = self
                    .tables
                    .iter()
                    .chain(self.prefixes.iter().filter(|_| self.allow_ddl));
                !known.map(|t| as_url(t)).any(|t| within(url, &t))
            })
    }
}

/// `location` (a path or URL) as a URL: a local absolute path becomes `file:///…`.
fn as_url(location: &str) -> String {
    if location.starts_with('/') {
        format!("file://{location}")
    } else {
        location.to_string()
    }
}

/// True when `location` is `prefix` or lies below it (`prefix` taken as a directory).
fn within(location: &str, prefix: &str) -> bool {
    let (location, prefix) = (as_url(location), as_url(prefix));
    let prefix = prefix.trim_end_matches('/');
    location == prefix
        || location
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn refused(reason: Refused) -> DataFusionError {
    DataFusionError::Plan(format!("refused: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn refusal(guard: &Guard, sql: &str) -> String {
        let session = SessionContext::new();
        session
            .sql("create table t as values (1)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        match guard.plan_sql(&session, sql, None).await {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn by_default_only_queries_run() {
        let guard = Guard::default();
        for sql in [
            "select * from t",
            "with x as (select 1) select * from x",
            "values (1), (2)",
            "explain select 1",
            "describe t",
            "set datafusion.execution.batch_size = 1",
            "reset datafusion.execution.batch_size",
            "prepare q(int) as select * from t where column1 = $1",
            "set datafusion.optimizer.enable_dynamic_filter_pushdown = false",
            "set datafusion.optimizer.enable_dynamic_filter_pushdown = true",
            "reset datafusion.optimizer.enable_dynamic_filter_pushdown",
            "set datafusion.optimizer.enable_round_robin_repartition = true",
            "set datafusion.execution.enable_file_stream_work_stealing = true",
        ] {
            assert_eq!(refusal(&guard, sql).await, "", "{sql}");
        }
        for (sql, says) in [
            (
                "create external table p stored as csv location '/etc/passwd'",
                "DDL",
            ),
            ("copy (select 1) to '/tmp/x.csv'", "COPY"),
            ("insert into t values (2)", "DML"),
            ("drop table t", "DDL"),
            ("start transaction", "not supported"),
            ("prepare w as insert into t values (3)", "DML"),
        ] {
            let error = refusal(&guard, sql).await;
            assert!(
                error.contains("refused") && error.contains(says),
                "{sql}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn allowed_ddl_must_point_under_a_data_prefix() {
        let guard = Guard {
            allow_ddl: true,
            prefixes: vec!["/srv/data".into(), "s3://lake/raw/".into()],
            tables: Vec::new(),
        };
        let create = |location: &str| {
            format!("create external table x (a int) stored as csv location '{location}'")
        };
        assert_eq!(refusal(&guard, &create("/srv/data/x.csv")).await, "");
        assert_eq!(refusal(&guard, &create("s3://lake/raw/x/")).await, "");
        assert_eq!(refusal(&guard, &create("/srv/data/a/../x.csv")).await, "");
        for outside in [
            "/etc/passwd",
            "/srv/database.csv",
            "/srv/data/../../etc/passwd",
            "/srv/data/../secrets/x.csv",
            "s3://lake/raw/../private/x",
        ] {
            let error = refusal(&guard, &create(outside)).await;
            assert!(
                error.contains("outside the data prefixes"),
                "{outside}: {error}"
            );
        }
        // A relative location is under the working directory.
        let here = Guard {
            allow_ddl: true,
            prefixes: vec![std::env::current_dir().unwrap().display().to_string()],
            tables: Vec::new(),
        };
        assert_eq!(refusal(&here, &create("data/x.csv")).await, "");
        let error = refusal(&here, &create("../x.csv")).await;
        assert!(error.contains("outside"), "{error}");
        let error = refusal(&guard, &create("srv/data/x.csv")).await;
        assert!(error.contains("outside"), "{error}");
        let error = refusal(&guard, "copy (select 1) to '/tmp/out.csv'").await;
        assert!(error.contains("outside"), "{error}");
        let none = Guard {
            allow_ddl: true,
            ..Guard::default()
        };
        let error = refusal(&none, &create("/srv/data/x.csv")).await;
        assert!(error.contains("--data-prefix"), "{error}");
    }

    #[test]
    fn prefixes_match_whole_path_segments() {
        assert!(within("/srv/data/x.csv", "/srv/data"));
        assert!(within("/srv/data/x.csv", "/srv/data/"));
        assert!(within("file:///srv/data/x.csv", "/srv/data"));
        assert!(!within("/srv/database.csv", "/srv/data"));
        assert!(within("s3://lake/raw/a.parquet", "s3://lake/raw"));
        assert!(!within("s3://lake/rawer/a.parquet", "s3://lake/raw"));
    }
}
