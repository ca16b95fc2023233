//! `baton sql`: statements from `-c`, a file or the interactive shell, run on a running
//! scheduler or an embedded cluster.

use std::path::{Path, PathBuf};
use std::time::Instant;

use datafusion::prelude::SessionContext;

use super::{CliError, shell, shorten, start_cluster};
use crate::catalog;
use crate::client::{BatonClient, Login, OutputFormat, ResultWriter, TABLE_ROW_LIMIT, Written};
use crate::cluster::{ClusterConfig, LocalCluster};
use crate::config::distributed_session_config;
use crate::planner::{self, PlannerError};

/// Where `baton sql` reads statements from.
#[derive(Debug, Clone)]
pub enum SqlSource {
    /// One statement (or several separated by `;`).
    Command(String),
    /// A file of statements.
    File(PathBuf),
    /// The interactive shell (statements from the terminal or standard input).
    Interactive,
}

/// Where `baton sql` runs statements.
#[derive(Debug, Clone)]
pub enum SqlTarget {
    /// A running scheduler; with a catalog, the client plans and submits the plan.
    Remote {
        /// Scheduler address.
        address: String,
        /// Catalog to plan against locally.
        catalog: Option<PathBuf>,
        /// Who logs in, and over what.
        login: Box<Login>,
    },
    /// An embedded cluster (TPC-H SF 0.1 when it names no catalog).
    Embedded(Box<ClusterConfig>),
}

/// Splits SQL text into statements at `;`, outside quotes and comments.
pub fn split_statements(text: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                current.push(c);
            }
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            (None, '-') if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            (None, ';') => {
                statements.push(std::mem::take(&mut current));
            }
            (None, c) => current.push(c),
        }
    }
    statements.push(current);
    statements
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A connection that statements run on: a client, the local planner when the client
/// plans, and the embedded cluster it may own.
pub(super) struct Session {
    pub(super) client: BatonClient,
    planner: Option<SessionContext>,
    _cluster: Option<LocalCluster>,
}

impl Session {
    async fn open(target: SqlTarget) -> Result<Self, CliError> {
        match target {
            SqlTarget::Remote {
                address,
                catalog,
                login,
            } => {
                let planner = match catalog {
                    Some(path) => {
                        let ctx = SessionContext::new_with_config(distributed_session_config(
                            crate::config::DEFAULT_TARGET_PARTITIONS,
                        ));
                        catalog::register_catalog(&ctx, &path).await?;
                        Some(ctx)
                    }
                    None => None,
                };
                Ok(Self {
                    client: BatonClient::connect_as(&address, &login).await?,
                    planner,
                    _cluster: None,
                })
            }
            SqlTarget::Embedded(config) => {
                let cluster = start_cluster(*config).await?;
                Ok(Self {
                    client: cluster.client().await?,
                    planner: None,
                    _cluster: Some(cluster),
                })
            }
        }
    }

    /// Plans (when this session plans locally) and submits `sql`; returns the query id.
    pub(super) async fn submit(&mut self, sql: &str) -> Result<String, CliError> {
        Ok(match &self.planner {
            Some(ctx) => {
                let plan = async {
                    let frame = ctx.sql(sql).await?;
                    frame.create_physical_plan().await
                }
                .await
                .map_err(PlannerError::from)?;
                let bytes = planner::encode_plan(plan)?;
                self.client.submit_plan(bytes, sql).await?
            }
            None => self.client.submit_sql(sql).await?,
        })
    }

    /// Runs `sql` and writes its result to standard output in `format` as it arrives
    /// (a table holds at most [`TABLE_ROW_LIMIT`] rows); returns what it wrote and the
    /// query's id.
    async fn run(
        &mut self,
        sql: &str,
        format: OutputFormat,
    ) -> Result<(Written, String), CliError> {
        let id = self.submit(sql).await?;
        let written = stream_result(&mut self.client, &id, format, || {}).await?;
        Ok((written, id))
    }
}

/// Writes query `id`'s result to standard output in `format` as its batches arrive (a
/// table holds at most [`TABLE_ROW_LIMIT`] rows); `before_first` runs once, before the
/// first batch is written.
pub(super) async fn stream_result(
    client: &mut BatonClient,
    id: &str,
    format: OutputFormat,
    before_first: impl FnOnce(),
) -> Result<Written, CliError> {
    let mut writer = ResultWriter::new(std::io::BufWriter::new(std::io::stdout()), format);
    let mut before_first = Some(before_first);
    let schema = client
        .fetch_each(id, |batch| {
            if let Some(first) = before_first.take() {
                first();
            }
            writer.write(batch).map_err(CliError::Format)
        })
        .await?;
    Ok(writer.finish(&schema)?)
}

/// Says on standard error how many rows came, in how long, and what a table left out.
pub(super) fn report(written: Written, elapsed: f64, query_id: &str) {
    if written.left_out > 0 {
        eprintln!(
            "the table shows the first {TABLE_ROW_LIMIT} rows; --format csv or json prints all"
        );
    }
    eprintln!(
        "{} row(s) in {elapsed:.3} s (query {query_id})",
        written.rows
    );
}

/// `baton sql`.
pub async fn run_sql(
    target: SqlTarget,
    source: SqlSource,
    format: OutputFormat,
    continue_on_error: bool,
) -> Result<(), CliError> {
    let text = match &source {
        SqlSource::Command(sql) => sql.clone(),
        SqlSource::File(path) => read_file(path)?,
        SqlSource::Interactive => {
            let mut session = Session::open(target).await?;
            return shell::run_shell(&mut session, format).await;
        }
    };
    let statements = split_statements(&text);
    let mut session = Session::open(target).await?;
    let single = statements.len() == 1;
    let mut failures = 0;
    for (i, statement) in statements.iter().enumerate() {
        let started = Instant::now();
        match session.run(statement, format).await {
            Ok((written, id)) => report(written, started.elapsed().as_secs_f64(), &id),
            Err(e) if single => return Err(e),
            Err(e) => {
                let error = CliError::Statement {
                    index: i + 1,
                    statement: shorten(statement),
                    cause: Box::new(e),
                };
                if !continue_on_error {
                    return Err(error);
                }
                eprintln!("error: {error}");
                failures += 1;
            }
        }
    }
    if failures > 0 {
        return Err(CliError::Failures(failures));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        let text = "select ';' as a; -- a comment; still comment\nselect 2;\n\n";
        assert_eq!(split_statements(text), vec!["select ';' as a", "select 2"]);
        assert!(split_statements(" ;; ").is_empty());
    }
}
