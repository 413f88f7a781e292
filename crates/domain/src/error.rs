//! The hub's one error type. Every layer returns [`Result`]; the gRPC face
//! turns an [`Error`] into a `tonic::Status` in exactly one place
//! (`From<Error> for Status` below), so a failure means the same thing to a
//! client whichever layer noticed it.

use std::fmt;

/// The result type used throughout the hub.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A request field breaks a rule. `field` is the path a client would
    /// write, e.g. `metrics[learningVelocity].value`.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// A record the request names does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },

    /// The caller is known but may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    /// The caller could not be identified.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    /// The request is valid but the hub's state does not allow it yet
    /// (e.g. sharing before registering).
    #[error("{0}")]
    FailedPrecondition(String),

    /// The request clashes with one made before: a request id reused for
    /// a different request. The message names the field.
    #[error("{0}")]
    AlreadyExists(String),

    /// The hub cannot serve the request right now (store I/O failure,
    /// shutting down). Retrying later may succeed; nothing was acknowledged.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// The caller has used up a limit (open streams, connections): it may
    /// retry once it has released some.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),

    /// The hub could not finish in time — a write the store did not
    /// confirm within the write timeout. Unlike UNAVAILABLE, the write may
    /// still be applied: a retry must carry the same request id.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    /// A bug or corrupted state. Logged with detail; the client sees a
    /// generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// Prefixes the field path of an `InvalidArgument` error, so nested
    /// validation can report `insight.evidence.data_points` while the inner
    /// code only knows `data_points`.
    pub fn in_field(self, parent: &str) -> Self {
        match self {
            Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                field: format!("{parent}.{field}"),
                reason,
            },
            other => other,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::Status;
        // The status code already says what kind of error it is; the
        // message carries only the detail.
        match err {
            Error::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            Error::NotFound { .. } => Status::not_found(err.to_string()),
            Error::PermissionDenied(detail) => Status::permission_denied(detail),
            Error::Unauthenticated(detail) => Status::unauthenticated(detail),
            Error::FailedPrecondition(detail) => Status::failed_precondition(detail),
            Error::AlreadyExists(detail) => Status::already_exists(detail),
            Error::Unavailable(detail) => Status::unavailable(detail),
            Error::DeadlineExceeded(detail) => Status::deadline_exceeded(detail),
            Error::ResourceExhausted(detail) => Status::resource_exhausted(detail),
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error; see the hub's log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = tonic::Status::from(
            Error::invalid("value", "must be within [0, 1], got 2").in_field("metrics[lv]"),
        );
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "metrics[lv].value: must be within [0, 1], got 2"
        );
    }

    #[test]
    fn internal_detail_is_not_leaked() {
        let status = tonic::Status::from(Error::Internal("secret path /x".into()));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
