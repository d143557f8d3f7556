//! The one error type of the library. It says whose fault a failure is; the
//! edge maps that to each protocol's status (`edge::status`).

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
    /// The client took too long to send its request (a body, a message).
    #[error("{0}")]
    RequestTimeout(String),
    /// The server holds as many request bytes as it will: back off and retry.
    #[error("{0}")]
    Overloaded(String),
    /// No credentials, or not the right ones, for an admin call.
    #[error("{0}")]
    Unauthenticated(String),
    /// Admin calls are refused from this peer.
    #[error("{0}")]
    Forbidden(String),
    /// The model or server exists but cannot serve right now.
    #[error("{0}")]
    Unavailable(String),
    /// The request conflicts with the current state (a model already loaded
    /// under that name).
    #[error("{0}")]
    Conflict(String),
    /// A version was not loaded because the server has no memory for it
    /// (`--memory-limit`).
    #[error("{0}")]
    InsufficientMemory(String),
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

    /// The error's class as the three-digit status every protocol's metrics
    /// label it with. HTTP's numbering, as a plain number: the edge maps it to
    /// each protocol's own status (`edge::status`).
    pub fn status_code(&self) -> u16 {
        match self {
            Error::InvalidInput(_) => 400,
            Error::Unauthenticated(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::Conflict(_) => 409,
            Error::PayloadTooLarge { .. } => 413,
            Error::QueueFull { .. } | Error::Overloaded(_) => 429,
            Error::RequestTimeout(_) => 408,
            Error::Internal(_) | Error::OutOfMemory(_) => 500,
            Error::Unavailable(_) | Error::Load(_) => 503,
            Error::DeadlineExceeded(_) => 504,
            Error::InsufficientMemory(_) => 507,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
