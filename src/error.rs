//! The one error type of the crate. Every refusal names the argument and the value.

/// Errors returned by every public function of sofa.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No CUDA driver library, or a driver with no usable device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),

    /// A tensor's shape or strides are not acceptable (or disagree with another tensor's).
    #[error("invalid shape for `{arg}`: {reason}")]
    InvalidShape { arg: &'static str, reason: String },

    /// A scalar parameter (dtype, head dim, window, …) is out of its range.
    #[error("invalid value for `{arg}`: {value} ({reason})")]
    InvalidParam {
        arg: &'static str,
        value: String,
        reason: String,
    },

    /// A buffer holds fewer elements (or bytes) than its shape and strides reach.
    #[error("buffer `{arg}` too small: needs {needed} elements, has {len}")]
    BufferTooSmall {
        arg: &'static str,
        needed: usize,
        len: usize,
    },

    /// An allocation on the device failed.
    #[error("out of device memory: requested {bytes} bytes")]
    OutOfMemory { bytes: usize },

    /// A kernel module could not be loaded or compiled (fatbin and NVRTC both failed).
    #[error("kernel `{family}` unavailable: {reason}")]
    KernelLoad { family: String, reason: String },

    /// An error reported by the CUDA driver.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),

    /// File input/output (tensor files, result files).
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// `Result` with sofa's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(arg: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidShape {
            arg,
            reason: reason.into(),
        }
    }

    pub fn param(
        arg: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidParam {
            arg,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The argument an input-validation error names, if any.
    pub fn argument(&self) -> Option<&'static str> {
        match self {
            Error::InvalidShape { arg, .. }
            | Error::InvalidParam { arg, .. }
            | Error::BufferTooSmall { arg, .. } => Some(arg),
            _ => None,
        }
    }
}
