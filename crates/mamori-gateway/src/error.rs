//! The gateway's one error type and its mapping to HTTP status codes.
//!
//! Every failure of the protection chain is a [`GatewayError`]; the HTTP layer turns it into a
//! status code and an Open Inference Protocol error body `{"error": "..."}` in one place
//! ([`GatewayError::status`]). Internal failures are logged in full but reported to the client
//! without internals.

use thiserror::Error;

/// Errors of the gateway and its protection chain.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// No credential was presented.
    #[error("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    MissingCredential,
    /// The credential is unknown, malformed or does not match.
    #[error("invalid API key")]
    InvalidCredential,
    /// The key was revoked.
    #[error("API key {0} has been revoked")]
    RevokedKey(String),
    /// The key may not use this model (model isolation), or the tier forbids what was asked.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The client is blocked by the escalation policy or by an administrator.
    #[error("client {0} is blocked")]
    Blocked(String),
    /// The request is malformed or violates the model card.
    #[error("{0}")]
    BadRequest(String),
    /// The request body exceeds the configured limit.
    #[error("request body of {got} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// Bytes received (at least).
        got: usize,
        /// Configured limit.
        limit: usize,
    },
    /// No such model (or version).
    #[error("{0}")]
    NotFound(String),
    /// Rate limit or daily quota exceeded.
    #[error("{message}")]
    RateLimited {
        /// What was exceeded.
        message: String,
        /// Seconds after which a retry can succeed.
        retry_after_s: u64,
    },
    /// The model (or upstream server) failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// Storage (key store, audit database) failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// Configuration is invalid.
    #[error("configuration error: {0}")]
    Config(String),
}

impl GatewayError {
    /// The HTTP status code this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::MissingCredential
            | GatewayError::InvalidCredential
            | GatewayError::RevokedKey(_) => 401,
            GatewayError::Forbidden(_) | GatewayError::Blocked(_) => 403,
            GatewayError::BadRequest(_) => 400,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::NotFound(_) => 404,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::Inference(_) => 502,
            GatewayError::Storage(_) | GatewayError::Config(_) => 500,
        }
    }

    /// The message shown to the client: internal errors are not detailed — a model or
    /// upstream failure can name internal addresses, files and the model's internals, which
    /// are the operator's (in the gateway's log and the audit record), not the caller's.
    pub fn public_message(&self) -> String {
        match self {
            GatewayError::Storage(_) | GatewayError::Config(_) => {
                "internal server error".to_string()
            }
            GatewayError::Inference(_) => {
                "inference failed: the model did not answer (the gateway's log has the cause)"
                    .to_string()
            }
            other => other.to_string(),
        }
    }

    /// Short machine-readable kind, recorded in the audit log as the decision.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::MissingCredential => "missing_credential",
            GatewayError::InvalidCredential => "invalid_credential",
            GatewayError::RevokedKey(_) => "revoked_key",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::Blocked(_) => "blocked",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::Inference(_) => "inference_error",
            GatewayError::Storage(_) => "storage_error",
            GatewayError::Config(_) => "config_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_hidden_internals() {
        assert_eq!(GatewayError::MissingCredential.status(), 401);
        assert_eq!(GatewayError::Blocked("c".into()).status(), 403);
        assert_eq!(
            GatewayError::RateLimited {
                message: "x".into(),
                retry_after_s: 1
            }
            .status(),
            429
        );
        let e = GatewayError::Storage("disk /secret/path full".into());
        assert_eq!(e.status(), 500);
        assert!(!e.public_message().contains("secret"));
    }
}
