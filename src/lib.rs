//! sofa — hand-written CUDA kernels for softmax-free attention.
//!
//! Operators live in [`ops`] (GPU) and [`reference`](mod@reference) (f64 CPU oracle); [`runtime`] owns the
//! device, its primary context and the kernel modules. See SPEC.md for what each operator
//! computes.

pub mod baseline;
pub mod bench;
#[cfg(feature = "capi")]
pub mod capi;
pub mod error;
pub mod io;
pub mod ops;
pub mod reference;
pub mod runtime;
pub mod tensor;
pub mod verify;

pub use error::{Error, Result};
pub use runtime::{LoadPath, LoadPolicy, Runtime};
pub use tensor::{DType, Dims, Element, Layout, LayoutKind, Strides};
