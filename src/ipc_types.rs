//! The column types Baton's data takes while it is Arrow IPC: shuffle output over Flight
//! and in spill files, results to clients, small results held by the scheduler.
//!
//! arrow-rs cannot write a dictionary whose values are themselves a dictionary
//! (`Dictionary(Int32, Dictionary(UInt32, Utf8))`), which DataFusion's string functions
//! return for such input. Such a column is written as one dictionary of the innermost
//! values (`Dictionary(Int32, Utf8)`): the same values under the outer keys, with the
//! declared type in the field's metadata. A reader that knows the declared schema (a
//! shuffle reader, a spilled partition) casts back to it; Baton's client reads it from
//! that metadata ([`declared_schema`]); other clients get the written form. Every other
//! type is written as it is, and a schema without such a column costs one look at its
//! fields.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;

/// The schema batches of `schema` are written with over Arrow IPC: `schema` itself
/// (the same `Arc`) unless a column holds a dictionary of dictionaries.
pub fn ipc_schema(schema: &SchemaRef) -> SchemaRef {
    map_fields(schema, ipc_field)
}

/// `batch` with its columns cast to `schema`'s types (between a declared schema and its
/// [`ipc_schema`]); `batch` itself when its types already are those.
pub fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let same = batch.num_columns() == schema.fields().len()
        && batch
            .schema()
            .fields()
            .iter()
            .zip(schema.fields())
            .all(|(have, want)| have.data_type() == want.data_type());
    if same {
        return Ok(batch);
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(
            |(column, field)| match column.data_type() == field.data_type() {
                true => Ok(Arc::clone(column)),
                false => cast(column, field.data_type()),
            },
        )
        .collect::<Result<_, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
}

/// The schema `written` (an [`ipc_schema`], as a reader got it) declares: its marked
/// fields get their declared types back. `written` itself when nothing is marked.
pub fn declared_schema(written: &SchemaRef) -> SchemaRef {
    map_fields(written, declared_field)
}

/// Field metadata of a written dictionary field: its declared type, as arrow prints it.
const DECLARED_TYPE: &str = "baton.declared_type";

/// `schema` with its fields mapped by `map` (None: unchanged); `schema` itself when
/// none changes.
fn map_fields(schema: &SchemaRef, map: fn(&FieldRef) -> Option<FieldRef>) -> SchemaRef {
    let mapped: Vec<Option<FieldRef>> = schema.fields().iter().map(map).collect();
    if mapped.iter().all(Option::is_none) {
        return Arc::clone(schema);
    }
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .zip(mapped)
        .map(|(field, mapped)| mapped.unwrap_or_else(|| Arc::clone(field)))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `data_type` with the fields it nests (list items, struct fields) mapped by `map`;
/// None when it nests none that `map` changes.
fn map_nested(data_type: &DataType, map: fn(&FieldRef) -> Option<FieldRef>) -> Option<DataType> {
    match data_type {
        DataType::List(item) => map(item).map(DataType::List),
        DataType::LargeList(item) => map(item).map(DataType::LargeList),
        DataType::FixedSizeList(item, size) => {
            map(item).map(|item| DataType::FixedSizeList(item, *size))
        }
        DataType::Struct(fields) => {
            let mapped: Vec<Option<FieldRef>> = fields.iter().map(map).collect();
            mapped.iter().any(Option::is_some).then(|| {
                let fields = fields.iter().zip(mapped);
                DataType::Struct(
                    fields
                        .map(|(field, mapped)| mapped.unwrap_or_else(|| Arc::clone(field)))
                        .collect::<Fields>(),
                )
            })
        }
        _ => None,
    }
}

/// `field` in its written form, marked with its declared type where it is a
/// dictionary; None when it is written as it is.
fn ipc_field(field: &FieldRef) -> Option<FieldRef> {
    let written = ipc_type(field.data_type())?;
    let declared = field.data_type().to_string();
    let mut field = Field::clone(field).with_data_type(written);
    if let DataType::Dictionary(..) = field.data_type() {
        field.metadata_mut().insert(DECLARED_TYPE.into(), declared);
    }
    Some(Arc::new(field))
}

/// `field`, as written, with its declared type back; None when it is written as
/// declared (or its mark names a type arrow cannot parse back: it stays as written).
fn declared_field(field: &FieldRef) -> Option<FieldRef> {
    let declared = match field.metadata().get(DECLARED_TYPE) {
        Some(declared) => declared.parse().ok()?,
        None => map_nested(field.data_type(), declared_field)?,
    };
    let mut field = Field::clone(field).with_data_type(declared);
    field.metadata_mut().remove(DECLARED_TYPE);
    Some(Arc::new(field))
}

/// The written form of `data_type`, or `None` when it is written as it is.
fn ipc_type(data_type: &DataType) -> Option<DataType> {
    let DataType::Dictionary(keys, values) = data_type else {
        return map_nested(data_type, ipc_field);
    };
    let values_written = ipc_type(values);
    match values_written.as_ref().unwrap_or(values) {
        // `ipc_type` never returns a dictionary of dictionaries, so `inner` is not a
        // dictionary.
        DataType::Dictionary(_, inner) => Some(DataType::Dictionary(keys.clone(), inner.clone())),
        written => values_written
            .is_some()
            .then(|| DataType::Dictionary(keys.clone(), Box::new(written.clone()))),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, DictionaryArray, Int64Array, StructArray};
    use datafusion::arrow::datatypes::{Int32Type, UInt32Type};
    use datafusion::arrow::ipc::reader::StreamReader;
    use datafusion::arrow::ipc::writer::StreamWriter;
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn nested_dictionary() -> DataType {
        DataType::Dictionary(
            Box::new(DataType::Int32),
            Box::new(DataType::Dictionary(
                Box::new(DataType::UInt32),
                Box::new(DataType::Utf8),
            )),
        )
    }

    /// A batch with a dictionary of dictionaries at the top and inside a struct.
    fn batch() -> RecordBatch {
        let inner: DictionaryArray<UInt32Type> = vec![Some("foo"), Some("bar"), None, Some("foo")]
            .into_iter()
            .collect();
        let outer = DictionaryArray::<Int32Type>::try_new(
            vec![Some(3), Some(1), None, Some(0), Some(2)].into(),
            Arc::new(inner),
        )
        .unwrap();
        let outer: ArrayRef = Arc::new(outer);
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5]));
        let nested = StructArray::from(vec![(
            Arc::new(Field::new("d", nested_dictionary(), true)),
            Arc::clone(&outer),
        )]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("d", nested_dictionary(), true),
            Field::new("s", nested.data_type().clone(), true),
        ]));
        RecordBatch::try_new(schema, vec![ids, outer, Arc::new(nested)]).unwrap()
    }

    #[test]
    fn a_schema_without_nested_dictionaries_is_written_as_it_is() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new_dictionary("b", DataType::Int32, DataType::Utf8, true),
            Field::new_list("c", Field::new("item", DataType::Utf8, true), true),
        ]));
        assert!(Arc::ptr_eq(&ipc_schema(&schema), &schema));
    }

    #[test]
    fn dictionaries_of_dictionaries_cross_ipc_and_come_back_as_declared() {
        let batch = batch();
        let declared = batch.schema();
        // The declared form is what arrow-rs refuses to write.
        assert!(StreamWriter::try_new(Vec::new(), &declared).is_err());

        let written = ipc_schema(&declared);
        let flat = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        assert_eq!(written.field(0).data_type(), &DataType::Int64);
        assert_eq!(written.field(1).data_type(), &flat);
        let DataType::Struct(inner) = written.field(2).data_type() else {
            panic!("struct expected");
        };
        assert_eq!(inner[0].data_type(), &flat);

        let mut writer = StreamWriter::try_new(Vec::new(), &written).unwrap();
        writer
            .write(&conform(batch.clone(), &written).unwrap())
            .unwrap();
        let bytes = writer.into_inner().unwrap();
        let read: Vec<RecordBatch> = StreamReader::try_new(&bytes[..], None)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // What a client without the plan knows: the schema as read.
        assert_eq!(declared_schema(&read[0].schema()), declared);
        let back = conform(read[0].clone(), &declared).unwrap();
        assert_eq!(back.schema(), declared);
        assert_eq!(
            pretty_format_batches(&[back]).unwrap().to_string(),
            pretty_format_batches(&[batch]).unwrap().to_string()
        );
    }
}
