use thiserror::Error;

/// Why a runtime could not do what the worker asked. The message ends up in the instance's
/// `status_detail`, so it names the instance or image concerned.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The instance (named by its task id) is not known to the runtime.
    #[error("instance {0} not found")]
    NotFound(String),
    #[error("instance {0} is already deployed")]
    AlreadyDeployed(String),
    /// The deploy command cannot be run by this runtime (bad image reference, port syntax, …).
    #[error("invalid deploy command: {0}")]
    InvalidSpec(String),
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    /// The runtime's backend (e.g. the containerd socket) cannot be reached.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}
