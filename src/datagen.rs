//! TPC-H data generation (with the `tpchgen` crates) into `.tbl` or Parquet files, plus a
//! `catalog.toml` that names them.

use std::fmt::{Display, Write as _};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

use crate::catalog::TableFormat;

/// The eight TPC-H tables.
pub const TPCH_TABLES: [&str; 8] = [
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
];

/// Rows per Parquet row group: small enough that a scan splits into several partitions.
const ROW_GROUP_ROWS: usize = 32 * 1024;

/// Errors of data generation.
#[derive(Debug, thiserror::Error)]
pub enum DatagenError {
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Arrow or Parquet failed.
    #[error("generating {path}: {message}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// The object store could not be reached or written.
    #[error("writing to {url}: {message}")]
    Store {
        /// Where.
        url: String,
        /// The cause.
        message: String,
    },
    /// The scale factor is not positive.
    #[error("scale factor must be positive, got {0}")]
    Scale(f64),
    /// Only tbl and parquet are generated.
    #[error("datagen writes tbl or parquet, not {0:?}")]
    Format(TableFormat),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DatagenError + '_ {
    move |source| DatagenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn encode_error(path: &Path, e: impl Display) -> DatagenError {
    DatagenError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn write_parquet(
    batches: impl Iterator<Item = Result<RecordBatch, ArrowError>>,
    schema: &SchemaRef,
    path: &Path,
) -> Result<(), DatagenError> {
    let file = File::create(path).map_err(io_error(path))?;
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
        .map_err(|e| encode_error(path, e))?;
    for batch in batches {
        let batch = batch.map_err(|e| encode_error(path, e))?;
        writer.write(&batch).map_err(|e| encode_error(path, e))?;
    }
    writer.close().map_err(|e| encode_error(path, e))?;
    Ok(())
}

fn write_tbl<T: Display>(rows: impl Iterator<Item = T>, path: &Path) -> Result<(), DatagenError> {
    let file = File::create(path).map_err(io_error(path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    for row in rows {
        writeln!(out, "{row}").map_err(io_error(path))?;
    }
    out.flush().map_err(io_error(path))
}

/// Writes one table; returns its schema.
fn generate_table(
    table: &str,
    scale: f64,
    format: TableFormat,
    path: &Path,
) -> Result<SchemaRef, DatagenError> {
    macro_rules! generate {
        ($generator:ident, $arrow:ident) => {{
            let schema = $arrow::schema_ref();
            match format {
                TableFormat::Parquet => {
                    write_parquet($arrow::new($generator::new(scale, 1, 1)), &schema, path)?
                }
                TableFormat::Tbl => write_tbl($generator::new(scale, 1, 1).iter(), path)?,
                TableFormat::Csv => return Err(DatagenError::Format(format)),
            }
            Ok(schema)
        }};
    }
    match table {
        "region" => generate!(RegionGenerator, RegionArrow),
        "nation" => generate!(NationGenerator, NationArrow),
        "supplier" => generate!(SupplierGenerator, SupplierArrow),
        "customer" => generate!(CustomerGenerator, CustomerArrow),
        "part" => generate!(PartGenerator, PartArrow),
        "partsupp" => generate!(PartSuppGenerator, PartSuppArrow),
        "orders" => generate!(OrderGenerator, OrderArrow),
        _ => generate!(LineItemGenerator, LineItemArrow),
    }
}

fn sql_type(data_type: &DataType) -> String {
    match data_type {
        DataType::Int64 => "BIGINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Date32 => "DATE".into(),
        _ => "VARCHAR".into(),
    }
}

/// Generates TPC-H at `scale` into `out` and writes `out/catalog.toml`; returns its path.
pub fn generate_tpch(scale: f64, out: &Path, format: TableFormat) -> Result<PathBuf, DatagenError> {
    if scale.is_nan() || scale <= 0.0 {
        return Err(DatagenError::Scale(scale));
    }
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let extension = match format {
        TableFormat::Parquet => "parquet",
        TableFormat::Tbl => "tbl",
        TableFormat::Csv => return Err(DatagenError::Format(format)),
    };
    let format_name = extension;
    // Largest tables first so the two cores stay busy to the end.
    let mut order = TPCH_TABLES.to_vec();
    order.reverse();
    let (tx, rx) = std::sync::mpsc::channel::<&str>();
    for table in &order {
        tx.send(table).expect("queue open");
    }
    drop(tx);
    let queue = std::sync::Mutex::new(rx);
    let results: Vec<Result<(String, SchemaRef), DatagenError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    // The lock guard must drop before the table is generated.
                    let next = || queue.lock().expect("queue lock").recv();
                    while let Ok(table) = next() {
                        let path = out.join(format!("{table}.{extension}"));
                        done.push(
                            generate_table(table, scale, format, &path)
                                .map(|s| (table.to_string(), s)),
                        );
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("datagen worker panicked"))
            .collect()
    });
    let mut schemas = std::collections::HashMap::new();
    for result in results {
        let (table, schema) = result?;
        schemas.insert(table, schema);
    }
    let mut catalog = format!("# TPC-H scale factor {scale}, generated by `baton datagen`\n");
    for table in TPCH_TABLES {
        let schema = &schemas[table];
        let columns = schema
            .fields()
            .iter()
            .map(|f| format!("[\"{}\", \"{}\"]", f.name(), sql_type(f.data_type())))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            catalog,
            "\n[[table]]\nname = \"{table}\"\nformat = \"{format_name}\"\npath = \"{table}.{extension}\"\ncolumns = [{columns}]\n"
        );
    }
    let catalog_path = out.join("catalog.toml");
    std::fs::write(&catalog_path, catalog).map_err(io_error(&catalog_path))?;
    Ok(catalog_path)
}

/// TPC-H at `scale` into the object store prefix `url` (`s3://bucket/prefix`, with the
/// store's settings from the environment): generated into a local staging directory,
/// then each file, `catalog.toml` last, uploaded in parts. The catalog's paths are
/// relative, so `--catalog URL/catalog.toml` reads the tables from the store. Returns the
/// catalog's URL.
pub async fn upload_tpch(
    scale: f64,
    url: &str,
    format: TableFormat,
) -> Result<String, DatagenError> {
    use object_store::ObjectStoreExt;
    use tokio::io::AsyncWriteExt;
    let failed = |message: String| DatagenError::Store {
        url: url.to_string(),
        message,
    };
    let prefix = url::Url::parse(&format!("{}/", url.trim_end_matches('/')))
        .map_err(|e| failed(e.to_string()))?;
    let store = crate::object_stores::build_store(&prefix, &Default::default())
        .map_err(|e| failed(e.to_string()))?;
    let staging = std::env::temp_dir().join(format!(
        "baton-datagen-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let generated = {
        let staging = staging.clone();
        tokio::task::spawn_blocking(move || generate_tpch(scale, &staging, format))
            .await
            .map_err(|e| failed(e.to_string()))
    };
    let uploaded = async {
        generated??;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&staging)
            .map_err(io_error(&staging))?
            .filter_map(|entry| Some(entry.ok()?.path()))
            .collect();
        // The catalog last: once it is there, every table it names is too.
        files.sort_by_key(|f| f.file_name().is_some_and(|n| n == "catalog.toml"));
        for file in files {
            let name = file
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let target = prefix.join(&name).map_err(|e| failed(e.to_string()))?;
            let path = object_store::path::Path::from_url_path(target.path())
                .map_err(|e| failed(e.to_string()))?;
            let mut writer = object_store::buffered::BufWriter::new(store.clone(), path);
            let mut source = tokio::fs::File::open(&file)
                .await
                .map_err(io_error(&file))?;
            tokio::io::copy(&mut source, &mut writer)
                .await
                .map_err(|e| failed(format!("{name}: {e}")))?;
            writer
                .shutdown()
                .await
                .map_err(|e| failed(format!("{name}: {e}")))?;
        }
        let catalog = prefix
            .join("catalog.toml")
            .map_err(|e| failed(e.to_string()))?;
        // Read back: the store has it.
        let path = object_store::path::Path::from_url_path(catalog.path())
            .map_err(|e| failed(e.to_string()))?;
        store.head(&path).await.map_err(|e| failed(e.to_string()))?;
        Ok(catalog.to_string())
    }
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    uploaded
}

/// The TPC-H catalog at `scale` in the cache under `cache_dir`, generated on first use.
pub fn cached_tpch(
    cache_dir: &Path,
    scale: f64,
    format: TableFormat,
) -> Result<PathBuf, DatagenError> {
    let name = match format {
        TableFormat::Tbl => "tbl",
        _ => "parquet",
    };
    let dir = cache_dir.join(format!("tpch-sf{scale}-{name}"));
    let catalog = dir.join("catalog.toml");
    if catalog.exists() {
        return Ok(catalog);
    }
    // Generate beside the final place and rename, so an interrupted run leaves no
    // half-written cache behind.
    // Unique per call: threads of one process may generate the same data at once.
    static STAGINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let staging = cache_dir.join(format!(
        ".tpch-sf{scale}-{name}-{}-{}",
        std::process::id(),
        STAGINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&staging);
    generate_tpch(scale, &staging, format)?;
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(catalog),
        // Another process finished first; use its copy.
        Err(_) if catalog.exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(catalog)
        }
        Err(e) => Err(io_error(&dir)(e)),
    }
}

/// Baton's cache directory: `$BATON_CACHE_DIR`, else `$HOME/.cache/baton`, else a
/// directory under the system temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BATON_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("baton"),
        None => std::env::temp_dir().join("baton-cache"),
    }
}
