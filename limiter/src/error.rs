//! The one place where the limiter's errors become gRPC statuses.

use crate::store::StoreError;
use crate::validate::Invalid;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// The request is invalid; nothing was changed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Redis failed or did not answer in time.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<LimiterError> for tonic::Status {
    fn from(error: LimiterError) -> Self {
        match error {
            LimiterError::Invalid(invalid) => tonic::Status::invalid_argument(invalid.to_string()),
            // The filter falls back on UNAVAILABLE (and on any error); the
            // details stay in the limiter's log.
            LimiterError::Store(StoreError::Reply { .. }) => {
                tonic::Status::internal("the limiter's Redis state is not as expected")
            }
            LimiterError::Store(StoreError::Timeout(timeout)) => {
                tonic::Status::unavailable(format!("Redis did not answer within {timeout:?}"))
            }
            LimiterError::Store(StoreError::Redis(_)) => {
                tonic::Status::unavailable("Redis is unavailable")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let invalid = LimiterError::from(Invalid {
            field: "limits.burst".into(),
            problem: "0 is outside 1..=1000000".into(),
        });
        let status = tonic::Status::from(invalid);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "limits.burst: 0 is outside 1..=1000000");
        let timeout =
            LimiterError::from(StoreError::Timeout(std::time::Duration::from_millis(500)));
        assert_eq!(
            tonic::Status::from(timeout).code(),
            tonic::Code::Unavailable
        );
        let refused = LimiterError::from(StoreError::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "connection refused",
        ))));
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::Unavailable
        );
        let reply = LimiterError::from(StoreError::Reply {
            script: "acquire",
            reply: "[]".into(),
        });
        assert_eq!(tonic::Status::from(reply).code(), tonic::Code::Internal);
    }
}
