//! Printing result batches as a table, CSV or JSON lines, as they arrive.

use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::util::pretty::pretty_format_batches;

/// Rows the table format shows at most. A table is aligned over all of its rows, so its
/// rows are held until the result ends; past this many the rest are counted, not held
/// (CSV and JSON stream every row with bounded memory).
pub const TABLE_ROW_LIMIT: usize = 10_000;

/// How `baton sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table (at most 10,000 rows; `TABLE_ROW_LIMIT`).
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row.
    Json,
}

/// Writes result batches to `W` in one format as they arrive.
pub struct ResultWriter<W: Write> {
    sink: Sink<W>,
    rows: usize,
}

enum Sink<W: Write> {
    Table {
        out: W,
        batches: Vec<RecordBatch>,
        held: usize,
    },
    Csv(Box<csv::Writer<W>>),
    Json(LineDelimitedWriter<W>),
}

/// What [`ResultWriter::finish`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Rows in the result.
    pub rows: usize,
    /// Rows a table left out (past [`TABLE_ROW_LIMIT`]).
    pub left_out: usize,
}

impl<W: Write> ResultWriter<W> {
    /// A writer of `format` to `out`.
    pub fn new(out: W, format: OutputFormat) -> Self {
        let sink = match format {
            OutputFormat::Table => Sink::Table {
                out,
                batches: Vec::new(),
                held: 0,
            },
            OutputFormat::Csv => Sink::Csv(Box::new(
                csv::WriterBuilder::new().with_header(true).build(out),
            )),
            OutputFormat::Json => Sink::Json(LineDelimitedWriter::new(out)),
        };
        Self { sink, rows: 0 }
    }

    /// Writes (a table: holds, up to its limit) one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        self.rows += batch.num_rows();
        match &mut self.sink {
            Sink::Table { batches, held, .. } => {
                let room = TABLE_ROW_LIMIT - *held;
                if room > 0 && batch.num_rows() > 0 {
                    let kept = batch.slice(0, batch.num_rows().min(room));
                    *held += kept.num_rows();
                    batches.push(kept);
                }
                Ok(())
            }
            Sink::Csv(writer) => writer.write(batch),
            Sink::Json(writer) => writer.write(batch),
        }
    }

    /// Ends the result (of `schema`): prints a held table, or a CSV header when no row
    /// came (none for a result without columns, such as a `SET`'s), and flushes.
    pub fn finish(self, schema: &SchemaRef) -> Result<Written, ArrowError> {
        let empty = || RecordBatch::new_empty(schema.clone());
        let held = match self.sink {
            Sink::Table {
                mut out,
                mut batches,
                held,
            } => {
                if batches.is_empty() {
                    batches.push(empty());
                }
                writeln!(out, "{}", pretty_format_batches(&batches)?)?;
                out.flush()?;
                held
            }
            Sink::Csv(mut writer) => {
                if self.rows == 0 && !schema.fields().is_empty() {
                    writer.write(&empty())?;
                }
                writer.into_inner().flush()?;
                self.rows
            }
            Sink::Json(mut writer) => {
                writer.finish()?;
                writer.into_inner().flush()?;
                self.rows
            }
        };
        Ok(Written {
            rows: self.rows,
            left_out: self.rows - held,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(values: std::ops::Range<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(values))]).unwrap()
    }

    #[test]
    fn csv_and_json_stream_every_row_and_a_table_holds_at_most_its_limit() {
        let batches = [batch(0..TABLE_ROW_LIMIT as i64), batch(0..5)];
        let schema = batches[0].schema();
        for (format, lines) in [
            (OutputFormat::Csv, TABLE_ROW_LIMIT + 6),
            (OutputFormat::Json, TABLE_ROW_LIMIT + 5),
        ] {
            let mut out = Vec::new();
            let mut writer = ResultWriter::new(&mut out, format);
            batches.iter().for_each(|b| writer.write(b).unwrap());
            let written = writer.finish(&schema).unwrap();
            assert_eq!(written.rows, TABLE_ROW_LIMIT + 5);
            assert_eq!(written.left_out, 0);
            assert_eq!(String::from_utf8(out).unwrap().lines().count(), lines);
        }
        let mut out = Vec::new();
        let mut writer = ResultWriter::new(&mut out, OutputFormat::Table);
        batches.iter().for_each(|b| writer.write(b).unwrap());
        let written = writer.finish(&schema).unwrap();
        assert_eq!((written.rows, written.left_out), (TABLE_ROW_LIMIT + 5, 5));
        // Header, its rules and the rows shown.
        assert_eq!(
            String::from_utf8(out).unwrap().lines().count(),
            TABLE_ROW_LIMIT + 4
        );
    }

    #[test]
    fn an_empty_result_prints_its_columns() {
        let schema = batch(0..0).schema();
        let mut out = Vec::new();
        ResultWriter::new(&mut out, OutputFormat::Csv)
            .finish(&schema)
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "n\n");
        // A statement's result without columns (a SET) prints nothing at all.
        let mut out = Vec::new();
        ResultWriter::new(&mut out, OutputFormat::Csv)
            .finish(&Arc::new(Schema::empty()))
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "");
    }
}
