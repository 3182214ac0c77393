//! Tensor files: read and write safetensors (f16, bf16, f32, f64) as f64 host tensors.

use crate::error::{Error, Result};
use crate::tensor::{DType, Dims};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// Element type of a tensor in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileDType {
    F16,
    BF16,
    F32,
    F64,
}

impl FileDType {
    fn to_safetensors(self) -> Dtype {
        match self {
            FileDType::F16 => Dtype::F16,
            FileDType::BF16 => Dtype::BF16,
            FileDType::F32 => Dtype::F32,
            FileDType::F64 => Dtype::F64,
        }
    }

    /// The device storage type of the same name (`None` for f64).
    pub fn storage(self) -> Option<DType> {
        match self {
            FileDType::F16 => Some(DType::F16),
            FileDType::BF16 => Some(DType::BF16),
            FileDType::F32 => Some(DType::F32),
            FileDType::F64 => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FileDType::F16 => "f16",
            FileDType::BF16 => "bf16",
            FileDType::F32 => "f32",
            FileDType::F64 => "f64",
        }
    }

    /// Rounds `x` to this type (the value a file of this type would hold).
    pub fn round(self, x: f64) -> f64 {
        match self {
            FileDType::F16 => f16::from_f64(x).to_f64(),
            FileDType::BF16 => bf16::from_f64(x).to_f64(),
            FileDType::F32 => x as f32 as f64,
            FileDType::F64 => x,
        }
    }

    fn encode(self, x: f64, out: &mut Vec<u8>) {
        match self {
            FileDType::F16 => out.extend(f16::from_f64(x).to_le_bytes()),
            FileDType::BF16 => out.extend(bf16::from_f64(x).to_le_bytes()),
            FileDType::F32 => out.extend((x as f32).to_le_bytes()),
            FileDType::F64 => out.extend(x.to_le_bytes()),
        }
    }

    fn decode(self, b: &[u8]) -> f64 {
        match self {
            FileDType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f64(),
            FileDType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            FileDType::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
            FileDType::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")),
        }
    }

    fn size(self) -> usize {
        match self {
            FileDType::F16 | FileDType::BF16 => 2,
            FileDType::F32 => 4,
            FileDType::F64 => 8,
        }
    }
}

impl From<DType> for FileDType {
    fn from(d: DType) -> Self {
        match d {
            DType::F16 => FileDType::F16,
            DType::BF16 => FileDType::BF16,
            DType::F32 => FileDType::F32,
        }
    }
}

/// A host tensor: shape, the dtype it was (or will be) stored in, and its values in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: FileDType,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl HostTensor {
    /// `[B,H,N,D]` extents, or an error naming the tensor when it is not 4-D.
    pub fn dims(&self, name: &'static str) -> Result<Dims> {
        match self.shape[..] {
            [b, h, n, d] => Ok(Dims::new(b, h, n, d)),
            _ => Err(Error::shape(
                name,
                format!("expected 4 dims [B,H,N,D], got {:?}", self.shape),
            )),
        }
    }

    /// Errors (naming the tensor) unless its shape is exactly `want`.
    pub fn expect_shape(&self, name: &'static str, want: &[usize]) -> Result<()> {
        if self.shape != want {
            return Err(Error::shape(
                name,
                format!("expected shape {want:?}, got {:?}", self.shape),
            ));
        }
        Ok(())
    }
}

/// The tensors of one file, by name.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, HostTensor>,
}

impl TensorFile {
    /// The tensor `name`, or an error listing what the file holds.
    pub fn get(&self, name: &'static str) -> Result<&HostTensor> {
        self.tensors.get(name).ok_or_else(|| {
            let have: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
            Error::shape(
                name,
                format!("tensor `{name}` missing from the input file (it holds: {have:?})"),
            )
        })
    }

    /// Parses safetensors bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| invalid("parsing safetensors", e))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                Dtype::F16 => FileDType::F16,
                Dtype::BF16 => FileDType::BF16,
                Dtype::F32 => FileDType::F32,
                Dtype::F64 => FileDType::F64,
                other => {
                    return Err(Error::param(
                        "dtype",
                        format!("{other:?}"),
                        format!("tensor `{name}`: expected f16, bf16, f32 or f64"),
                    ))
                }
            };
            let data = view
                .data()
                .chunks_exact(dtype.size())
                .map(|b| dtype.decode(b))
                .collect();
            tensors.insert(
                name,
                HostTensor {
                    dtype,
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(TensorFile { tensors })
    }

    /// Serializes to safetensors bytes (each tensor rounded to its dtype).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let raw: Vec<(&str, FileDType, &[usize], Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let mut bytes = Vec::with_capacity(t.data.len() * t.dtype.size());
                t.data.iter().for_each(|&x| t.dtype.encode(x, &mut bytes));
                (name.as_str(), t.dtype, &t.shape[..], bytes)
            })
            .collect();
        let mut views = Vec::with_capacity(raw.len());
        for (name, dt, shape, bytes) in &raw {
            let view =
                safetensors::tensor::TensorView::new(dt.to_safetensors(), shape.to_vec(), bytes)
                    .map_err(|e| invalid(&format!("tensor `{name}`"), e))?;
            views.push((*name, view));
        }
        safetensors::serialize(views, None).map_err(|e| invalid("writing safetensors", e))
    }

    /// Reads a `.safetensors` file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| io_err(path, "reading", e))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Io { context, source } => Error::Io {
                context: format!("{}: {context}", path.display()),
                source,
            },
            other => other,
        })
    }

    /// Writes a `.safetensors` file.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()?).map_err(|e| io_err(path, "writing", e))
    }
}

fn invalid(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Io {
        context: context.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    }
}

fn io_err(path: &Path, what: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: format!("{what} {}", path.display()),
        source,
    }
}
