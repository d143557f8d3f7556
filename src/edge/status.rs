//! The one place an error becomes a protocol's status: HTTP's status code and
//! gRPC's code, from the class the core error type gives.

use http::StatusCode;

use crate::core::error::Error;

/// What each protocol calls an [`Error`].
pub trait ErrorStatus {
    /// The HTTP status.
    fn http_status(&self) -> StatusCode;
    /// The gRPC status code.
    fn grpc_code(&self) -> tonic::Code;
}

impl ErrorStatus for Error {
    fn http_status(&self) -> StatusCode {
        StatusCode::from_u16(self.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidInput(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::MethodNotAllowed { .. } => Code::Unimplemented,
            Error::PayloadTooLarge { .. }
            | Error::QueueFull { .. }
            | Error::Overloaded(_)
            | Error::OutOfMemory(_)
            | Error::InsufficientMemory(_) => Code::ResourceExhausted,
            Error::Conflict(_) => Code::AlreadyExists,
            Error::DeadlineExceeded(_) | Error::RequestTimeout(_) => Code::DeadlineExceeded,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_maps_to_a_real_status() {
        let all = [
            Error::invalid("x"),
            Error::not_found("x"),
            Error::MethodNotAllowed {
                method: "PUT".into(),
                path: "/".into(),
                allow: "GET",
            },
            Error::PayloadTooLarge { limit: 1 },
            Error::QueueFull {
                model: "m".into(),
                version: 1,
                capacity: 1,
            },
            Error::DeadlineExceeded("x".into()),
            Error::RequestTimeout("x".into()),
            Error::Overloaded("x".into()),
            Error::Unauthenticated("x".into()),
            Error::Forbidden("x".into()),
            Error::Unavailable("x".into()),
            Error::load("x"),
            Error::Internal("x".into()),
            Error::OutOfMemory("x".into()),
        ];
        for e in all {
            assert_eq!(e.http_status().as_u16(), e.status_code(), "{e:?}");
            assert_ne!(e.grpc_code(), tonic::Code::Ok);
        }
    }
}
