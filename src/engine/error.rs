//! The engine's typed errors: what went wrong, in words a user or operator can act on.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EngineError {
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),
    #[error("model weights are unusable: {0}")]
    BadWeights(String),
    #[error("model weights are missing: {0}")]
    WeightsMissing(String),
    #[error("the model `{0}` is not loaded on this server")]
    ModelNotLoaded(String),
    #[error("cancelled")]
    Cancelled,
    #[error("the engine has stopped")]
    Stopped,
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Classifies a compute error: allocation failures become `OutOfMemory`.
    pub fn from_compute(err: impl std::fmt::Display) -> Self {
        let text = err.to_string();
        let lower = text.to_lowercase();
        if lower.contains("out of memory") || lower.contains("out_of_memory") {
            EngineError::OutOfMemory(text)
        } else {
            EngineError::Internal(text)
        }
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(err: candle_core::Error) -> Self {
        EngineError::from_compute(err)
    }
}
