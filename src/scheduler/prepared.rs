//! Flight SQL prepared statements: SQL with `$1`, `$2`, … placeholders, created by a
//! client, bound to values it sends with `DoPut`, and run each time it asks. They
//! belong to the user who created them, in the session they were created in.

use std::collections::HashMap;
use std::sync::Mutex;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;

use super::Origin;
use crate::security::Caller;

/// Statements held at most per scheduler; past it, creating one is refused until
/// clients close theirs.
const MAX_PREPARED: usize = 10_000;

/// One prepared statement.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The SQL, with placeholders.
    pub sql: String,
    /// Who created it, and in which session.
    pub origin: Origin,
    /// The values bound now, for `$1` on; empty until the client binds some.
    pub params: Vec<ScalarValue>,
}

/// Why a prepared statement call was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreparedError {
    /// No statement has the handle (never created, or closed).
    #[error("no prepared statement with this handle")]
    Unknown,
    /// Another user's statement.
    #[error("the prepared statement belongs to another user")]
    NotYours,
    /// Too many open statements.
    #[error("too many prepared statements are open; close some")]
    Full,
    /// Bound values the statement cannot take.
    #[error("parameters: {0}")]
    Parameters(String),
}

/// The open prepared statements, by handle.
#[derive(Debug, Default)]
pub struct PreparedStatements {
    open: Mutex<HashMap<String, Prepared>>,
}

impl PreparedStatements {
    /// Keeps `statement`; returns its handle.
    pub fn create(&self, statement: Prepared) -> Result<String, PreparedError> {
        let mut open = self.open.lock().expect("prepared lock");
        if open.len() >= MAX_PREPARED {
            return Err(PreparedError::Full);
        }
        let handle = uuid::Uuid::new_v4().simple().to_string();
        open.insert(handle.clone(), statement);
        Ok(handle)
    }

    /// The statement `handle` names, if `caller` may use it.
    pub fn get(&self, handle: &str, caller: &Caller) -> Result<Prepared, PreparedError> {
        let open = self.open.lock().expect("prepared lock");
        let statement = open.get(handle).ok_or(PreparedError::Unknown)?;
        if caller.may_access(&statement.origin.owner) {
            Ok(statement.clone())
        } else {
            Err(PreparedError::NotYours)
        }
    }

    /// Binds the first row of `batches` to the statement `handle` names.
    pub fn bind(
        &self,
        handle: &str,
        caller: &Caller,
        batches: &[RecordBatch],
    ) -> Result<(), PreparedError> {
        let params = first_row(batches)?;
        self.get(handle, caller)?;
        if let Some(statement) = self.open.lock().expect("prepared lock").get_mut(handle) {
            statement.params = params;
        }
        Ok(())
    }

    /// Closes the statement `handle` names.
    pub fn close(&self, handle: &str, caller: &Caller) -> Result<(), PreparedError> {
        self.get(handle, caller)?;
        self.open.lock().expect("prepared lock").remove(handle);
        Ok(())
    }
}

/// The values of the first row of `batches`, column by column (a client binds one row
/// per execution).
fn first_row(batches: &[RecordBatch]) -> Result<Vec<ScalarValue>, PreparedError> {
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    if batches.iter().map(RecordBatch::num_rows).sum::<usize>() > 1 {
        return Err(PreparedError::Parameters(
            "one row of values per execution is supported".into(),
        ));
    }
    batch
        .columns()
        .iter()
        .map(|column| {
            ScalarValue::try_from_array(column, 0)
                .map_err(|e| PreparedError::Parameters(e.to_string()))
        })
        .collect()
}

/// The schema of the parameters `plan` has: `$1`, `$2`, … in order, each of the type
/// the SQL gives it (Null where it gives none).
pub fn parameter_schema(plan: &LogicalPlan) -> Result<SchemaRef, PreparedError> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| PreparedError::Parameters(e.to_string()))?;
    let mut names: Vec<&String> = types.keys().collect();
    // $1 … $9, $10 …: by number, not by text.
    names.sort_by_key(|name| {
        name.trim_start_matches('$')
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    let fields: Vec<Field> = names
        .into_iter()
        .map(|name| {
            let data_type = types[name].clone().unwrap_or(DataType::Null);
            Field::new(name.as_str(), data_type, true)
        })
        .collect();
    Ok(std::sync::Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::security::Role;

    fn caller(name: &str) -> Caller {
        Caller {
            name: name.into(),
            role: Role::User,
        }
    }

    #[tokio::test]
    async fn parameters_are_listed_in_order_with_their_types() {
        let ctx = SessionContext::new();
        ctx.sql("create table t (a bigint, b varchar) as values (1, 'x')")
            .await
            .unwrap();
        let plan = ctx
            .state()
            .create_logical_plan("select * from t where b = $2 and a = $1")
            .await
            .unwrap();
        let schema = parameter_schema(&plan).unwrap();
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            fields,
            [
                ("$1".to_string(), DataType::Int64),
                ("$2".to_string(), DataType::Utf8View)
            ]
        );
    }

    #[test]
    fn a_statement_is_bound_and_closed_by_its_owner_only() {
        let statements = PreparedStatements::default();
        let handle = statements
            .create(Prepared {
                sql: "select $1".into(),
                origin: Origin::sessionless("alice".into()),
                params: Vec::new(),
            })
            .unwrap();
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from(vec![7])) as _),
            ("b", Arc::new(StringArray::from(vec!["x"])) as _),
        ])
        .unwrap();
        let (alice, bob) = (caller("alice"), caller("bob"));
        assert_eq!(
            statements.bind(&handle, &bob, std::slice::from_ref(&batch)),
            Err(PreparedError::NotYours)
        );
        statements
            .bind(&handle, &alice, std::slice::from_ref(&batch))
            .unwrap();
        assert_eq!(
            statements.get(&handle, &alice).unwrap().params,
            [ScalarValue::Int64(Some(7)), ScalarValue::from("x")]
        );
        assert_eq!(
            statements.close(&handle, &bob),
            Err(PreparedError::NotYours)
        );
        statements.close(&handle, &alice).unwrap();
        assert_eq!(
            statements.get(&handle, &alice).unwrap_err(),
            PreparedError::Unknown
        );
    }
}
