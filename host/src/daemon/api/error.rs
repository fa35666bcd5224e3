//! Error answers: `{"error": "..."}` with the status its cause calls for. Every typed error
//! of the layers below becomes a status here, and only here.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::daemon::instances::InstanceError;
use crate::daemon::jobs::SubmitError;
use crate::daemon::schedules::ScheduleError;
use crate::ops::{ErrorKind, OpsError};
use crate::wire::ErrorBody;

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

/// Seconds a client is told to wait after a 429.
const RETRY_AFTER_SECS: &str = "5";

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub(super) fn too_many(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
    }
    pub(super) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub(super) fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no such {what}"))
    }
    pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        // The rest of a refused body is never read: tell the client not to reuse the connection.
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS
        ) {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

impl From<crate::daemon::db::DbError> for ApiError {
    fn from(e: crate::daemon::db::DbError) -> Self {
        ApiError::internal(e)
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::Invalid(m) => ApiError::bad(m),
            ScheduleError::NotFound => ApiError::not_found("schedule"),
            e @ ScheduleError::Exists { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            ScheduleError::Db(e) => ApiError::internal(e),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            e @ SubmitError::Busy { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            e @ SubmitError::TooMany { .. } => ApiError::too_many(e.to_string()),
            e @ SubmitError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            e @ SubmitError::Thread(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            SubmitError::Db(e) => ApiError::internal(e),
        }
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        match e {
            InstanceError::Invalid(m) => ApiError::bad(m),
            e @ InstanceError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            InstanceError::Db(e) => ApiError::internal(e),
            e @ (InstanceError::Gone { .. } | InstanceError::Source(_)) => ApiError::internal(e),
        }
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        let status = match e.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::daemon::auth::AuthError> for ApiError {
    fn from(e: crate::daemon::auth::AuthError) -> Self {
        ApiError::internal(e)
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(e)
    }
}
