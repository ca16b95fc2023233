//! Tables from a TOML catalog file.
//!
//! ```toml
//! [[table]]
//! name = "lineitem"
//! format = "tbl"            # tbl | csv | parquet
//! path = "sf1/lineitem.tbl" # file, directory or glob; relative to the catalog file
//! columns = [["l_orderkey", "BIGINT"], ["l_quantity", "DECIMAL(15,2)"]]
//!
//! [[table]]
//! name = "orders"
//! format = "parquet"
//! path = "s3://bucket/sf1/orders.parquet"   # an object store (see object_stores.rs)
//!
//! [object_store]            # for the s3:// paths; unset fields come from AWS_* variables
//! endpoint = "http://127.0.0.1:9000"
//! allow_http = true
//! ```
//!
//! A `.tbl` line ends in `|`, so a CSV reader sees one more, empty, field than the table
//! has columns: the file is read with a trailing placeholder column, and the table
//! itself is a view that leaves it out (the raw file table is registered nowhere, so
//! clients listing tables see each table once).
//!
//! A table whose file or directory does not exist (at load or later) is still registered,
//! with its declared columns, but any query that reads it fails and names the missing
//! path: one missing file must not take the other tables down, nor read as empty.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown, col,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use url::Url;

use crate::object_stores::{S3Settings, build_store, is_url};

/// Schema where a raw `.tbl` table is declared, for a moment, before its view takes it.
const RAW_SCHEMA: &str = "baton_raw";

/// Errors of loading a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("reading catalog {path}: {source}")]
    Read {
        /// The catalog file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid catalog.
    #[error("catalog {path} is not valid: {message}")]
    Invalid {
        /// The catalog file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// DataFusion could not register a table.
    #[error("catalog {path}, table {table}: {source}")]
    Register {
        /// The catalog file.
        path: PathBuf,
        /// The table.
        table: String,
        /// DataFusion's error.
        source: datafusion::error::DataFusionError,
    },
}

/// File format of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// TPC-H `.tbl`: `|`-separated, no header, a trailing `|` on every line.
    Tbl,
    /// CSV (header and delimiter configurable).
    Csv,
    /// Parquet.
    Parquet,
}

/// One table of a catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    /// SQL name.
    pub name: String,
    /// File format.
    pub format: TableFormat,
    /// File, directory or glob, relative to the catalog file.
    pub path: String,
    /// Columns as (name, SQL type); required for tbl and csv, optional for parquet.
    #[serde(default)]
    pub columns: Vec<(String, String)>,
    /// CSV only: whether the first line is a header (default true).
    pub header: Option<bool>,
    /// CSV only: the field delimiter (default ",").
    pub delimiter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    table: Vec<TableDef>,
    object_store: Option<S3Settings>,
}

/// What a catalog file holds.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Its tables.
    pub tables: Vec<TableDef>,
    /// Its `[object_store]` settings for `s3://` paths.
    pub s3: S3Settings,
}

/// A catalog as registered in a session.
#[derive(Debug, Clone, Default)]
pub struct RegisteredCatalog {
    /// The names of its tables.
    pub tables: Vec<String>,
    /// Its `[object_store]` settings, for executors to read its `s3://` tables with.
    pub s3: S3Settings,
    /// Where its tables' data is: absolute paths of files or directories, and URLs.
    pub locations: Vec<String>,
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_type(s: &str) -> bool {
    !s.trim().is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '(' | ')' | ',' | ' ' | '_'))
}

/// Parses catalog text; `path` names the file in errors.
pub fn parse_catalog(text: &str, path: &Path) -> Result<Catalog, CatalogError> {
    let invalid = |message: String| CatalogError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let file: CatalogFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    for table in &file.table {
        if !is_identifier(&table.name) {
            return Err(invalid(format!(
                "table name {:?} must be letters, digits and _",
                table.name
            )));
        }
        if table.columns.is_empty() && table.format != TableFormat::Parquet {
            return Err(invalid(format!("table {} needs columns", table.name)));
        }
        for (column, ty) in &table.columns {
            if !is_identifier(column) || !is_type(ty) {
                return Err(invalid(format!(
                    "table {}: column {column:?} of type {ty:?} is not a valid column",
                    table.name
                )));
            }
        }
        if table.path.contains('\'') {
            return Err(invalid(format!("table {}: path has a quote", table.name)));
        }
        if is_url(&table.path) {
            Url::parse(&table.path).map_err(|e| {
                invalid(format!(
                    "table {}: path {:?} is not a valid URL: {e}",
                    table.name, table.path
                ))
            })?;
        }
    }
    Ok(Catalog {
        tables: file.table,
        s3: file.object_store.unwrap_or_default(),
    })
}

/// Where a catalog's relative table paths start: its directory, or the URL prefix of a
/// catalog read from an object store.
#[derive(Debug, Clone)]
enum Base {
    Dir(PathBuf),
    Url(Url),
}

/// Where a table's data is, its path resolved against the catalog's [`Base`].
#[derive(Debug, Clone)]
enum Resolved {
    Local(PathBuf),
    Remote(Url),
}

fn resolve(table_path: &str, base: &Base) -> Result<Resolved, DataFusionError> {
    let bad_url = |e: url::ParseError| {
        DataFusionError::Configuration(format!("table path {table_path:?}: {e}"))
    };
    if is_url(table_path) {
        return Ok(Resolved::Remote(Url::parse(table_path).map_err(bad_url)?));
    }
    Ok(match base {
        Base::Dir(dir) => Resolved::Local(dir.join(table_path)),
        Base::Url(prefix) => Resolved::Remote(prefix.join(table_path).map_err(bad_url)?),
    })
}

/// The text of the catalog at `path`, a file or an object store URL (read with the
/// store settings of the environment), and the base of its relative table paths.
async fn read_catalog(path: &Path) -> Result<(String, Base), CatalogError> {
    let failed = |source: std::io::Error| CatalogError::Read {
        path: path.to_path_buf(),
        source,
    };
    let text_path = path.to_string_lossy();
    if is_url(&text_path) {
        let url = Url::parse(&text_path).map_err(|e| failed(std::io::Error::other(e)))?;
        let store = build_store(&url, &S3Settings::default())
            .map_err(|e| failed(std::io::Error::other(e)))?;
        let object = object_store::path::Path::from_url_path(url.path())
            .map_err(|e| failed(std::io::Error::other(e)))?;
        let bytes = async { store.get(&object).await?.bytes().await }
            .await
            .map_err(|e| failed(std::io::Error::other(e)))?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|e| failed(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let base = url
            .join(".")
            .map_err(|e| failed(std::io::Error::other(e)))?;
        return Ok((text, Base::Url(base)));
    }
    let text = std::fs::read_to_string(path).map_err(failed)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = std::fs::canonicalize(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &dir
    })
    .map_err(failed)?;
    Ok((text, Base::Dir(dir)))
}

/// Reads the catalog at `path` (a file, or an `s3://…` or other object store URL) and
/// registers its tables in `ctx`, and the object stores of those that live in one;
/// returns their names and the object store settings. Relative table paths are relative
/// to the catalog's directory or URL prefix.
pub async fn register_catalog(
    ctx: &SessionContext,
    path: &Path,
) -> Result<RegisteredCatalog, CatalogError> {
    let (text, base) = read_catalog(path).await?;
    let Catalog { tables, s3 } = parse_catalog(&text, path)?;
    let mut names = Vec::new();
    let mut locations = Vec::new();
    for table in &tables {
        let registered = async {
            let resolved = resolve(&table.path, &base)?;
            match &resolved {
                Resolved::Remote(url) => {
                    ctx.register_object_store(url, build_store(url, &s3)?);
                    locations.push(url.to_string());
                }
                Resolved::Local(path) => locations.push(path.to_string_lossy().into_owned()),
            }
            register_table(ctx, table, resolved).await
        };
        registered.await.map_err(|source| CatalogError::Register {
            path: path.to_path_buf(),
            table: table.name.clone(),
            source,
        })?;
        names.push(table.name.clone());
    }
    Ok(RegisteredCatalog {
        tables: names,
        s3,
        locations,
    })
}

/// A file-backed table that checks, at every scan, that its data path still exists:
/// DataFusion reads a missing file as an empty table, which would be a silent wrong answer.
#[derive(Debug)]
struct CheckedTable {
    inner: Arc<dyn TableProvider>,
    data: DataPath,
    /// Bytes of its data files when it was registered.
    bytes: u64,
}

/// Where a table's data is: a local file or directory, or objects in a store.
#[derive(Debug, Clone)]
enum DataPath {
    Local(PathBuf),
    Remote {
        url: Url,
        store: Arc<dyn ObjectStore>,
    },
}

impl DataPath {
    /// Bytes of the data there (every file under a directory or prefix); None when
    /// nothing is there.
    async fn bytes(&self) -> Option<u64> {
        match self {
            DataPath::Local(path) => path.exists().then(|| data_bytes(path)),
            DataPath::Remote { url, store } => {
                let path = object_store::path::Path::from_url_path(url.path()).ok()?;
                if let Ok(meta) = store.head(&path).await {
                    return Some(meta.size);
                }
                let objects: Vec<_> = store.list(Some(&path)).try_collect().await.ok()?;
                (!objects.is_empty()).then(|| objects.iter().map(|o| o.size).sum())
            }
        }
    }

    /// True when data is there.
    async fn exists(&self) -> bool {
        match self {
            DataPath::Local(path) => path.exists(),
            DataPath::Remote { .. } => self.bytes().await.is_some(),
        }
    }
}

impl std::fmt::Display for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataPath::Local(path) => write!(f, "{}", path.display()),
            DataPath::Remote { url, .. } => write!(f, "{url}"),
        }
    }
}

/// Bytes of the data files behind `table`, as measured when its catalog was loaded; for
/// a view, of the tables its plan reads. None when unknown: a glob, a table not from a
/// catalog file, or a view over one.
pub fn table_data_bytes(table: &dyn TableProvider) -> Option<u64> {
    if let Some(checked) = table.downcast_ref::<CheckedTable>() {
        Some(checked.bytes)
    } else if let Some(view) = table.downcast_ref::<ViewTable>() {
        plan_data_bytes(view.logical_plan())
    } else {
        None
    }
}

/// Bytes of table data a logical plan reads (subqueries and views included), each
/// scanned table counted whole, as measured when its catalog was loaded; None when a
/// table's size is unknown (a glob, a table not from a catalog file).
pub fn plan_data_bytes(plan: &LogicalPlan) -> Option<u64> {
    let mut bytes = Some(0u64);
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let table = source_as_provider(&scan.source).ok();
            let read = table.and_then(|table| table_data_bytes(table.as_ref()));
            bytes = bytes.zip(read).map(|(sum, read)| sum + read);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    bytes
}

/// Bytes of the file at `path`, or of every file under the directory at `path`; 0 when
/// nothing is there.
fn data_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| data_bytes(&entry.path()))
        .sum()
}

#[async_trait]
impl TableProvider for CheckedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if !self.data.exists().await {
            return Err(DataFusionError::Plan(format!(
                "data file {} does not exist",
                self.data
            )));
        }
        self.inner.scan(state, projection, filters, limit).await
    }
}

/// The location DataFusion's DDL gets for data at `path`: a directory ends in `/`.
fn location(path: &Path) -> String {
    let mut text = path.to_string_lossy().into_owned();
    if path.is_dir() && !text.ends_with('/') {
        text.push('/');
    }
    text
}

fn column_list(columns: &[(String, String)]) -> String {
    columns
        .iter()
        .map(|(name, ty)| format!("\"{name}\" {ty}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn register_table(
    ctx: &SessionContext,
    table: &TableDef,
    resolved: Resolved,
) -> datafusion::error::Result<()> {
    let (location, data) = match resolved {
        Resolved::Local(path) => (location(&path), DataPath::Local(path)),
        Resolved::Remote(url) => {
            let store = ctx.runtime_env().object_store_registry.get_store(&url)?;
            (url.to_string(), DataPath::Remote { url, store })
        }
    };
    declare_table(ctx, table, &location, &data).await
}

/// Wraps the registered file table `name` in a [`CheckedTable`] (not for globs).
async fn guard_path(
    ctx: &SessionContext,
    name: &str,
    data: &DataPath,
) -> datafusion::error::Result<()> {
    let inner = ctx.table_provider(name).await?;
    ctx.deregister_table(name)?;
    ctx.register_table(name, checked(inner, data).await)?;
    Ok(())
}

/// `inner`, the table of the files at `data`, wrapped in a [`CheckedTable`] (not for
/// globs, which are of unknown size and may match nothing).
async fn checked(inner: Arc<dyn TableProvider>, data: &DataPath) -> Arc<dyn TableProvider> {
    if data.to_string().contains(['*', '?', '[']) {
        return inner;
    }
    Arc::new(CheckedTable {
        inner,
        bytes: data.bytes().await.unwrap_or(0),
        data: data.clone(),
    })
}

/// Registers `table` at `location` (the text form of `path`) with DataFusion DDL.
async fn declare_table(
    ctx: &SessionContext,
    table: &TableDef,
    location: &str,
    data: &DataPath,
) -> datafusion::error::Result<()> {
    let name = &table.name;
    match table.format {
        TableFormat::Tbl => {
            ctx.sql(&format!("CREATE SCHEMA IF NOT EXISTS {RAW_SCHEMA}"))
                .await?;
            let mut columns = table.columns.clone();
            columns.push(("__trailing".into(), "VARCHAR".into()));
            ctx.sql(&format!(
                "CREATE EXTERNAL TABLE {RAW_SCHEMA}.\"{name}\" ({}) STORED AS CSV LOCATION '{location}' \
                 OPTIONS ('format.delimiter' '|', 'format.has_header' 'false')",
                column_list(&columns)
            ))
            .await?;
            // The raw table leaves the schema again: the view scans it directly.
            let raw_name = format!("{RAW_SCHEMA}.\"{name}\"");
            let raw = checked(ctx.table_provider(raw_name.as_str()).await?, data).await;
            ctx.deregister_table(raw_name.as_str())?;
            let columns = table.columns.iter().map(|(c, _)| col(format!("\"{c}\"")));
            let plan = LogicalPlanBuilder::scan(name.as_str(), provider_as_source(raw), None)?
                .project(columns)?
                .build()?;
            ctx.register_table(name.as_str(), Arc::new(ViewTable::new(plan, None)))?;
            if let Some(catalog) =
                ctx.catalog(&ctx.state().config().options().catalog.default_catalog)
            {
                let empty = catalog
                    .schema(RAW_SCHEMA)
                    .is_some_and(|schema| schema.table_names().is_empty());
                if empty {
                    catalog.deregister_schema(RAW_SCHEMA, false)?;
                }
            }
        }
        TableFormat::Csv => {
            let delimiter = table.delimiter.as_deref().unwrap_or(",");
            if delimiter.len() != 1 || delimiter == "'" {
                return Err(datafusion::error::DataFusionError::Configuration(format!(
                    "delimiter {delimiter:?} must be one character"
                )));
            }
            ctx.sql(&format!(
                "CREATE EXTERNAL TABLE \"{name}\" ({}) STORED AS CSV LOCATION '{location}' \
                 OPTIONS ('format.delimiter' '{delimiter}', 'format.has_header' '{}')",
                column_list(&table.columns),
                table.header.unwrap_or(true)
            ))
            .await?;
            guard_path(ctx, &format!("\"{name}\""), data).await?;
        }
        TableFormat::Parquet => {
            let columns = if table.columns.is_empty() {
                String::new()
            } else {
                format!("({})", column_list(&table.columns))
            };
            ctx.sql(&format!(
                "CREATE EXTERNAL TABLE \"{name}\" {columns} STORED AS PARQUET LOCATION '{location}'"
            ))
            .await?;
            guard_path(ctx, &format!("\"{name}\""), data).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployment_catalogs_are_valid() {
        let compose = parse_catalog(
            include_str!("../deploy/catalog-s3.toml"),
            Path::new("deploy/catalog-s3.toml"),
        )
        .unwrap();
        assert_eq!(compose.tables.len(), 8);
        assert!(compose.tables.iter().all(|t| is_url(&t.path)));
        assert_eq!(compose.s3.endpoint.as_deref(), Some("http://minio:9000"));
        // The catalog.toml block of the Kubernetes ConfigMap.
        let manifest = include_str!("../deploy/kubernetes/config.yaml");
        let block: String = manifest
            .lines()
            .skip_while(|line| !line.trim_start().starts_with("catalog.toml: |"))
            .skip(1)
            .take_while(|line| line.starts_with("    ") || line.is_empty())
            .map(|line| format!("{}\n", line.trim_start()))
            .collect();
        let kubernetes = parse_catalog(&block, Path::new("config.yaml")).unwrap();
        assert_eq!(kubernetes.tables.len(), 2);
    }

    #[test]
    fn rejects_bad_toml_and_bad_definitions() {
        let p = Path::new("c.toml");
        assert!(matches!(
            parse_catalog("[[table]\nname=", p),
            Err(CatalogError::Invalid { .. })
        ));
        let no_columns = "[[table]]\nname='t'\nformat='csv'\npath='t.csv'";
        assert!(
            parse_catalog(no_columns, p)
                .unwrap_err()
                .to_string()
                .contains("needs columns")
        );
        let bad_type =
            "[[table]]\nname='t'\nformat='tbl'\npath='t.tbl'\ncolumns=[['a', 'INT; DROP']]";
        assert!(parse_catalog(bad_type, p).is_err());
        let bad_format = "[[table]]\nname='t'\nformat='xlsx'\npath='t'";
        assert!(parse_catalog(bad_format, p).is_err());
    }

    #[tokio::test]
    async fn tbl_tables_drop_the_trailing_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.tbl"), "1|one|\n2|two|\n").unwrap();
        let catalog = dir.path().join("catalog.toml");
        std::fs::write(
            &catalog,
            "[[table]]\nname='t'\nformat='tbl'\npath='t.tbl'\ncolumns=[['id','BIGINT'],['word','VARCHAR']]\n",
        )
        .unwrap();
        let ctx = SessionContext::new();
        assert_eq!(
            register_catalog(&ctx, &catalog).await.unwrap().tables,
            vec!["t"]
        );
        let batches = ctx
            .sql("select * from t order by id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches[0].num_columns(), 2);
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        // Each table is listed once: the raw file table behind the view is in no schema.
        let catalog = ctx.catalog("datafusion").unwrap();
        assert_eq!(catalog.schema_names(), vec!["public"]);
        assert_eq!(catalog.schema("public").unwrap().table_names(), vec!["t"]);
        // A missing file is still named when the view is read.
        std::fs::remove_file(dir.path().join("t.tbl")).unwrap();
        let error = ctx.sql("select * from t").await.unwrap().collect().await;
        assert!(error.unwrap_err().to_string().contains("t.tbl"));
    }

    #[tokio::test]
    async fn tables_know_the_bytes_of_their_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.tbl"), "1|one|\n2|two|\n").unwrap();
        std::fs::create_dir(dir.path().join("u")).unwrap();
        std::fs::write(dir.path().join("u/a.csv"), "id\n1\n2\n").unwrap();
        std::fs::write(dir.path().join("u/b.csv"), "id\n3\n").unwrap();
        let catalog = dir.path().join("catalog.toml");
        std::fs::write(
            &catalog,
            "[[table]]\nname='t'\nformat='tbl'\npath='t.tbl'\ncolumns=[['id','BIGINT'],['word','VARCHAR']]\n\
             [[table]]\nname='u'\nformat='csv'\npath='u'\ncolumns=[['id','BIGINT']]\n",
        )
        .unwrap();
        let ctx = SessionContext::new();
        register_catalog(&ctx, &catalog).await.unwrap();
        ctx.sql("create view tu as select t.id from t where t.id in (select id from u)")
            .await
            .unwrap();
        ctx.sql("create table m (id bigint)").await.unwrap();
        ctx.sql("create view tm as select t.id from t join m on t.id = m.id")
            .await
            .unwrap();
        let bytes =
            async |name: &str| table_data_bytes(ctx.table_provider(name).await.unwrap().as_ref());
        // `t` is a view over the raw table: its file counts through the view.
        assert_eq!(bytes("t").await, Some(14));
        // A directory: every file in it.
        assert_eq!(bytes("u").await, Some(12));
        // A view: the tables of its plan, subqueries included.
        assert_eq!(bytes("tu").await, Some(26));
        // A table in memory has no known size, nor has a view reading one.
        assert_eq!(bytes("m").await, None);
        assert_eq!(bytes("tm").await, None);
    }
}
