//! The one error type of the library, and its mapping to protocol status codes.

use http::StatusCode;

/// Everything that can go wrong between a request arriving and its answer leaving.
///
/// Each variant says whose fault it is, so each protocol maps it in one place:
/// client mistakes are 4xx, conditions of the server are 5xx.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed or does not match the model (names the field).
    #[error("{0}")]
    InvalidInput(String),
    /// No such model or version.
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        /// The methods the path takes, for the `Allow` header.
        allow: &'static str,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The model's queue is full: back off and retry.
    #[error(
        "the queue of model '{model}' version {version} is full ({capacity} requests); retry later"
    )]
    QueueFull {
        model: String,
        version: u64,
        capacity: usize,
    },
    /// The request's deadline passed before it was answered.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// No credentials, or not the right ones, for an admin call.
    #[error("{0}")]
    Unauthenticated(String),
    /// Admin calls are refused from this peer.
    #[error("{0}")]
    Forbidden(String),
    /// The model or server exists but cannot serve right now.
    #[error("{0}")]
    Unavailable(String),
    /// A model version failed to load (reported in metadata and logs).
    #[error("{0}")]
    Load(String),
    /// A fault of the server itself.
    #[error("internal error: {0}")]
    Internal(String),
    /// The runtime ran out of memory in a run. The server's condition, but the
    /// request may have caused it (a shape input asking for a huge output), so
    /// a batch that fails so is re-run request by request.
    #[error("{0}")]
    OutOfMemory(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }

    pub fn load(msg: impl Into<String>) -> Self {
        Error::Load(msg.into())
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Unavailable(_) | Error::Load(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) | Error::OutOfMemory(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidInput(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::MethodNotAllowed { .. } => Code::Unimplemented,
            Error::PayloadTooLarge { .. } | Error::QueueFull { .. } | Error::OutOfMemory(_) => {
                Code::ResourceExhausted
            }
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Forbidden(_) => Code::PermissionDenied,
            Error::Unavailable(_) | Error::Load(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
