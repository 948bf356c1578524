//! The crate's one error type. Messages are one line: ids and names from outside are quoted
//! with control characters escaped.

/// Why a GPU list or GPU configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The list names no GPU at all.
    #[error("empty GPU list")]
    EmptyList,
    /// An item of the list is empty ("0,,1" or a trailing comma); `position` counts from 1.
    #[error("empty GPU id at position {position}")]
    EmptyId {
        /// 1-based position of the empty item in the list.
        position: usize,
    },
    /// The same GPU is named twice.
    #[error("duplicate GPU id {0:?}")]
    DuplicateId(String),
    /// A GPU id that could not be passed on in a comma-separated variable.
    #[error("GPU id {0:?} contains a comma, whitespace or a control character")]
    InvalidId(String),
    /// `gpus-per-worker` is zero.
    #[error("gpus-per-worker must be at least 1")]
    ZeroPerWorker,
    /// `gpus-per-worker` asks for more GPUs than the list has.
    #[error(
        "gpus-per-worker {per_worker} is larger than the {available} GPU{} available",
        if *available == 1 { "" } else { "s" }
    )]
    PerWorkerTooLarge {
        /// The requested number of GPUs per worker.
        per_worker: usize,
        /// The number of GPUs in the list.
        available: usize,
    },
    /// The variable to pass the GPUs in is not a valid environment variable name.
    #[error("invalid GPU environment variable name {0:?}: expected letters, digits and '_', not starting with a digit")]
    InvalidEnvVar(String),
}
