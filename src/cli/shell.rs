//! The interactive SQL shell of `baton sql`: line editing and history, statements ended
//! by `;` over several lines, `\q`, `\d`, `\d NAME`, a live progress line for queries
//! that run longer than a second, and Ctrl-C to cancel the running query.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use super::CliError;
use super::sql::{Session, report, split_statements, stream_result};
use crate::client::{BatonClient, OutputFormat};
use crate::proto::{QueryStatus, StageState};

/// A query shows progress after running this long.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

const HELP: &str = "\\q quit   \\d list tables   \\d NAME describe a table   \\? help\n\
                    SQL statements end with ';' and may span lines; Ctrl-C cancels a running query.";

fn history_path() -> PathBuf {
    crate::datagen::cache_dir().join("sql_history")
}

/// True when `text` ends with a `;` outside quotes and comments.
pub fn ends_statement(text: &str) -> bool {
    let mut last = None;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '-' && chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                continue;
            }
            None => {}
        }
        if !c.is_whitespace() {
            last = Some((c, quote.is_some()));
        }
    }
    matches!(last, Some((';', false)))
}

/// A backslash command.
#[derive(Debug, PartialEq, Eq)]
enum Meta {
    Quit,
    Help,
    Tables,
    Describe(String),
    Unknown(String),
}

fn parse_meta(line: &str) -> Meta {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("\\q" | "\\quit" | "\\exit"), _) => Meta::Quit,
        (Some("\\?" | "\\h" | "\\help"), _) => Meta::Help,
        (Some("\\d"), None) => Meta::Tables,
        (Some("\\d"), Some(name)) => Meta::Describe(name.trim_end_matches(';').to_string()),
        _ => Meta::Unknown(line.to_string()),
    }
}

fn describe(name: &str, schema: &SchemaRef) -> String {
    let width = schema
        .fields()
        .iter()
        .map(|f| f.name().len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut out = format!("table {name}\n{:<width$}  type\n", "column");
    for field in schema.fields() {
        out.push_str(&format!(
            "{:<width$}  {}{}\n",
            field.name(),
            field.data_type(),
            if field.is_nullable() { "" } else { " not null" }
        ));
    }
    out
}

async fn run_meta(client: &mut BatonClient, meta: Meta) -> Result<bool, CliError> {
    match meta {
        Meta::Quit => return Ok(false),
        Meta::Help => println!("{HELP}"),
        Meta::Tables => {
            let tables = client.tables(None).await?;
            println!("{} table(s)", tables.len());
            for (name, schema) in tables {
                println!("  {name} ({} columns)", schema.fields().len());
            }
        }
        Meta::Describe(name) => match client.tables(Some(&name)).await?.first() {
            Some((found, schema)) => print!("{}", describe(found, schema)),
            None => eprintln!("no table named {name}"),
        },
        Meta::Unknown(line) => eprintln!("unknown command {line} (\\? for help)"),
    }
    Ok(true)
}

/// One line of progress: stages done/total and tasks done/running/total, or that the
/// query waits for admission.
fn progress_line(status: &QueryStatus, elapsed: Duration) -> String {
    if status.state == crate::proto::QueryState::Queued as i32 {
        return format!(
            "queued: the cluster runs as many queries as it may  {:.1} s",
            elapsed.as_secs_f64()
        );
    }
    let stages_done = status
        .stages
        .iter()
        .filter(|s| s.state == StageState::Done as i32)
        .count();
    let (done, running, total) = status.stages.iter().fold((0, 0, 0), |(d, r, t), s| {
        (d + s.tasks_done, r + s.tasks_running, t + s.tasks_total)
    });
    format!(
        "stages {stages_done}/{}  tasks {done} done, {running} running, {total} total  {:.1} s",
        status.stages.len(),
        elapsed.as_secs_f64()
    )
}

/// Runs one statement, showing progress and cancelling it on Ctrl-C. Failures are
/// printed; the shell goes on.
async fn run_statement(session: &mut Session, sql: &str, format: OutputFormat) {
    let started = Instant::now();
    // One listener for the whole statement, registered (polled once) before the submit:
    // a Ctrl-C while the query is planned cancels it too, and none falls between polls.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut ctrl_c_seen = futures::poll!(interrupted.as_mut()).is_ready();
    let id = match session.submit(sql).await {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: {e}");
            return;
        }
    };
    let mut fetcher = session.client.clone();
    let mut watcher = session.client.clone();
    let show_progress = std::io::stderr().is_terminal();
    // Rows print as they come; the progress line goes away before the first.
    let printing = std::cell::Cell::new(false);
    let shown = std::cell::Cell::new(false);
    let fetch = stream_result(&mut fetcher, &id, format, || {
        printing.set(true);
        if shown.get() {
            eprint!("\r\x1b[2K");
        }
    });
    tokio::pin!(fetch);
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    let outcome = loop {
        if ctrl_c_seen {
            break None;
        }
        tokio::select! {
            result = &mut fetch => break Some(result),
            _ = &mut interrupted => ctrl_c_seen = true,
            _ = ticks.tick(), if show_progress && !printing.get() => {
                if started.elapsed() >= PROGRESS_AFTER
                    && let Ok(status) = watcher.status(&id).await
                {
                    eprint!("\r\x1b[2K{}", progress_line(&status, started.elapsed()));
                    shown.set(true);
                }
            }
        }
    };
    if shown.get() && !printing.get() {
        eprint!("\r\x1b[2K");
    }
    match outcome {
        Some(Ok(written)) => report(written, started.elapsed().as_secs_f64(), &id),
        Some(Err(e)) => eprintln!("error: {e}"),
        None => match watcher.cancel(&id).await {
            Ok(_) => eprintln!("query {id} cancelled"),
            Err(e) => eprintln!("error: cancelling query {id}: {e}"),
        },
    }
}

/// Reads statements until `\q` or end of input.
pub async fn run_shell(session: &mut Session, format: OutputFormat) -> Result<(), CliError> {
    let mut editor = DefaultEditor::new().map_err(|e| CliError::Shell(e.to_string()))?;
    let history = history_path();
    let _ = editor.load_history(&history);
    if std::io::stdin().is_terminal() {
        eprintln!("baton SQL shell; statements end with ';' (\\? for help)");
    }
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "baton> "
        } else {
            "   ..> "
        };
        let line = tokio::task::block_in_place(|| editor.readline(prompt));
        match line {
            Ok(line) => {
                if buffer.is_empty() && line.trim_start().starts_with('\\') {
                    let _ = editor.add_history_entry(line.trim());
                    match run_meta(&mut session.client, parse_meta(line.trim())).await {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            eprintln!("error: {e}");
                            continue;
                        }
                    }
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if !ends_statement(&buffer) {
                    continue;
                }
                let text = std::mem::take(&mut buffer);
                let _ = editor.add_history_entry(text.trim());
                for statement in split_statements(&text) {
                    run_statement(session, &statement, format).await;
                }
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(CliError::Shell(e.to_string())),
        }
    }
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = editor.save_history(&history);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_ends_at_a_semicolon_outside_quotes_and_comments() {
        assert!(ends_statement("select 1;"));
        assert!(ends_statement("select 1;  \n"));
        assert!(!ends_statement("select ';'"));
        assert!(!ends_statement("select 1 -- done;"));
        assert!(ends_statement("select 1; -- trailing comment\n"));
        assert!(!ends_statement("select\n  1"));
    }

    #[test]
    fn backslash_commands_parse() {
        assert_eq!(parse_meta("\\q"), Meta::Quit);
        assert_eq!(parse_meta("\\d"), Meta::Tables);
        assert_eq!(parse_meta("\\d nation;"), Meta::Describe("nation".into()));
        assert!(matches!(parse_meta("\\x"), Meta::Unknown(_)));
    }
}
