//! Whether a task's failure may go away on another attempt.
//!
//! A transient failure comes from the world around the task (a read that failed, an object
//! store that timed out, a peer that went away): the scheduler runs the task again. A
//! deterministic one comes from the query and its data (a cast that cannot succeed, a
//! plan error, a query that needs more memory than the executor has): running it again
//! would fail the same way, so the query fails at once with that error.

use datafusion::error::DataFusionError;
use tonic::Code;

/// True when `error`, or an error it wraps, is one another attempt may not meet.
pub fn is_transient(error: &DataFusionError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(df) = e.downcast_ref::<DataFusionError>()
            && matches!(df, DataFusionError::ResourcesExhausted(_))
        {
            return false;
        }
        if e.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        if let Some(store) = e.downcast_ref::<object_store::Error>() {
            // An object that is not there will not appear by asking again.
            return !matches!(store, object_store::Error::NotFound { .. });
        }
        if let Some(status) = e.downcast_ref::<tonic::Status>() {
            return matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Unknown
            );
        }
        if e.downcast_ref::<tonic::transport::Error>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::error::ArrowError;

    use super::*;

    #[test]
    fn io_and_network_failures_are_transient() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert!(is_transient(&DataFusionError::IoError(io())));
        assert!(is_transient(&DataFusionError::ArrowError(
            Box::new(ArrowError::IoError("read".into(), io())),
            None
        )));
        let wrapped = DataFusionError::Context(
            "reading lineitem".into(),
            Box::new(DataFusionError::Shared(Arc::new(DataFusionError::IoError(
                io(),
            )))),
        );
        assert!(is_transient(&wrapped));
        assert!(is_transient(&DataFusionError::External(Box::new(
            tonic::Status::unavailable("peer gone")
        ))));
        let timeout = object_store::Error::Generic {
            store: "S3",
            source: Box::new(io()),
        };
        assert!(is_transient(&DataFusionError::ObjectStore(Box::new(
            timeout
        ))));
    }

    #[test]
    fn query_and_data_errors_are_deterministic() {
        assert!(!is_transient(&DataFusionError::ArrowError(
            Box::new(ArrowError::CastError("cannot cast 'x' to Int32".into())),
            None
        )));
        assert!(!is_transient(&DataFusionError::Plan(
            "no such column".into()
        )));
        assert!(!is_transient(&DataFusionError::Execution(
            "division by zero".into()
        )));
        assert!(!is_transient(&DataFusionError::ResourcesExhausted(
            "sort needs 2 MB".into()
        )));
        assert!(!is_transient(&DataFusionError::External(Box::new(
            tonic::Status::invalid_argument("bad ticket")
        ))));
        let missing = object_store::Error::NotFound {
            path: "t/part-0.parquet".into(),
            source: "gone".into(),
        };
        assert!(!is_transient(&DataFusionError::ObjectStore(Box::new(
            missing
        ))));
    }
}
