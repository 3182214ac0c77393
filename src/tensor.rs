//! Element types and the `[B, H, N, D]` layout (shape + element strides) every operator takes.

use crate::error::{Error, Result};
use half::{bf16, f16};

/// Storage type of a tensor. All arithmetic runs in fp32 (GPU) or f64 (reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F16, DType::BF16, DType::F32];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
        }
    }

    /// The suffix used in kernel names and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
        }
    }

    /// Relative Frobenius error a kernel in this storage type must stay within (vs f64).
    pub fn tolerance(self) -> f64 {
        match self {
            DType::F16 => 2e-3,
            DType::BF16 => 1.6e-2,
            DType::F32 => 1e-5,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" | "fp16" | "half" => Ok(DType::F16),
            "bf16" => Ok(DType::BF16),
            "f32" | "fp32" | "float" => Ok(DType::F32),
            _ => Err(Error::param("dtype", s, "expected f16, bf16 or f32")),
        }
    }
}

/// A storage element type: f16, bf16 or f32.
pub trait Element:
    Copy + Default + Send + Sync + bytemuck::Pod + cudarc::driver::DeviceRepr + 'static
{
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

/// Extents of a `[B, H, N, D]` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    pub b: usize,
    pub h: usize,
    pub n: usize,
    pub d: usize,
}

impl Dims {
    pub fn new(b: usize, h: usize, n: usize, d: usize) -> Self {
        Dims { b, h, n, d }
    }

    /// Number of elements, or `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.b
            .checked_mul(self.h)?
            .checked_mul(self.n)?
            .checked_mul(self.d)
    }

    /// Same batch, heads and length with another last dim (the shape of V or O).
    pub fn with_d(&self, d: usize) -> Self {
        Dims { d, ..*self }
    }
}

impl std::fmt::Display for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{},{},{},{}]", self.b, self.h, self.n, self.d)
    }
}

impl std::str::FromStr for Dims {
    type Err = Error;
    /// Parses `B,H,N,D` (N may use k/M suffixes: `1k` = 1024, `1M` = 1048576).
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let bad = |why: &str| Error::param("shape", s, why.to_string());
        if parts.len() != 4 {
            return Err(bad("expected B,H,N,D"));
        }
        let mut v = [0usize; 4];
        for (slot, p) in v.iter_mut().zip(&parts) {
            *slot = parse_count(p).ok_or_else(|| bad("each of B,H,N,D must be an integer"))?;
        }
        Ok(Dims::new(v[0], v[1], v[2], v[3]))
    }
}

/// Parses an integer with an optional binary `k`/`M` suffix.
pub fn parse_count(s: &str) -> Option<usize> {
    let (num, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1024),
        'm' | 'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mul)
}

/// Element strides of the batch, head and sequence dims; the last dim always has stride 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Strides {
    pub batch: usize,
    pub head: usize,
    pub seq: usize,
}

/// The two memory orders sofa is tested with; any other strides work too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayoutKind {
    /// `[B, H, N, D]` contiguous (the default).
    Bhnd,
    /// `[B, N, H, D]` contiguous: what most inference engines hold.
    Bnhd,
}

impl std::str::FromStr for LayoutKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "bhnd" => Ok(LayoutKind::Bhnd),
            "bnhd" => Ok(LayoutKind::Bnhd),
            _ => Err(Error::param("layout", s, "expected bhnd or bnhd")),
        }
    }
}

/// Shape plus strides of one tensor argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    pub dims: Dims,
    pub strides: Strides,
}

impl Layout {
    /// Contiguous `[B, H, N, D]`.
    pub fn contiguous(dims: Dims) -> Self {
        Self::of_kind(dims, LayoutKind::Bhnd)
    }

    pub fn of_kind(dims: Dims, kind: LayoutKind) -> Self {
        let Dims { h, n, d, .. } = dims;
        // Saturating: a shape whose strides overflow gets strides whose span overflows too, so
        // `span()` is `None` and `validate` refuses it (no overflow panic here).
        let m = usize::saturating_mul;
        let strides = match kind {
            LayoutKind::Bhnd => Strides {
                batch: m(m(h, n), d),
                head: m(n, d),
                seq: d,
            },
            LayoutKind::Bnhd => Strides {
                batch: m(m(n, h), d),
                head: d,
                seq: m(h, d),
            },
        };
        Layout { dims, strides }
    }

    /// Offset of element (b, h, n, 0).
    pub fn offset(&self, b: usize, h: usize, n: usize) -> usize {
        b * self.strides.batch + h * self.strides.head + n * self.strides.seq
    }

    /// Elements a buffer must hold for every index to be in bounds (`None` on overflow).
    pub fn span(&self) -> Option<usize> {
        let Dims { b, h, n, d } = self.dims;
        if b == 0 || h == 0 || n == 0 || d == 0 {
            return Some(0);
        }
        let last = (b - 1)
            .checked_mul(self.strides.batch)?
            .checked_add((h - 1).checked_mul(self.strides.head)?)?
            .checked_add((n - 1).checked_mul(self.strides.seq)?)?;
        last.checked_add(d)
    }

    /// True when no two indices map to the same element (required of outputs).
    pub fn is_non_overlapping(&self) -> bool {
        let Dims { b, h, n, d } = self.dims;
        let mut axes = [
            (self.strides.batch, b),
            (self.strides.head, h),
            (self.strides.seq, n),
        ];
        axes.sort_unstable();
        let mut reach = d; // elements covered by the dims inside the current one
        for (stride, extent) in axes {
            if extent <= 1 {
                continue;
            }
            if stride < reach {
                return false;
            }
            match stride
                .checked_mul(extent - 1)
                .and_then(|x| x.checked_add(reach))
            {
                Some(r) => reach = r,
                None => return false,
            }
        }
        true
    }

    /// Checks extents (all ≥ 1, `d ≤ max_d`), that index arithmetic fits in i64, and that a
    /// buffer of `len` elements holds every index.
    pub fn validate(&self, arg: &'static str, len: usize, max_d: usize) -> Result<()> {
        let Dims { b, h, n, d } = self.dims;
        for (name, v) in [("B", b), ("H", h), ("N", n)] {
            if v == 0 {
                return Err(Error::shape(
                    arg,
                    format!("{name} = 0 in {}; must be >= 1", self.dims),
                ));
            }
        }
        if d == 0 || d > max_d {
            return Err(Error::shape(
                arg,
                format!("head dim {d} in {}: must be in 1..={max_d}", self.dims),
            ));
        }
        let span = self
            .span()
            .filter(|&s| s <= i64::MAX as usize / 2)
            .ok_or_else(|| {
                Error::shape(
                    arg,
                    format!("{} with {:?} overflows", self.dims, self.strides),
                )
            })?;
        if span > len {
            return Err(Error::BufferTooSmall {
                arg,
                needed: span,
                len,
            });
        }
        Ok(())
    }
}
