//! Comparing a kernel's output with the f64 reference, fairly for its storage type.
//!
//! An output stored as `T` cannot be closer to the exact answer than the exact answer rounded to
//! `T`. Usually that floor is far below the dtype tolerance, but SimA's outputs scale like 1/N and
//! fall into f16's subnormal range at long sequences, where the floor alone exceeds 2e-3. The
//! bound used is therefore `max(dtype tolerance, 2 × floor)`, and both numbers are reported.
//! Where the algorithm itself loses accuracy in fp32 (SOFT's Newton iteration on a nearly singular
//! matrix, [`soft32`]), [`Comparison::admit_algorithm_floor`] widens the bound to that floor too.

pub mod soft32;

use crate::reference::rel_frobenius;
use crate::tensor::Element;

/// Outcome of one comparison.
#[derive(Clone, Copy, Debug)]
pub struct Comparison {
    /// ‖got − want‖ / ‖want‖ (NaN if `got` has a non-finite element).
    pub rel: f64,
    /// The same error for the reference rounded to the output dtype (the best attainable).
    pub floor: f64,
    /// The bound `rel` must meet.
    pub bound: f64,
    /// Elements of `got` that are NaN or infinite.
    pub non_finite: usize,
    /// The error of the same algorithm evaluated in fp32 on the CPU, when measured (else 0).
    pub algorithm_floor: f64,
}

impl Comparison {
    pub fn pass(&self) -> bool {
        self.non_finite == 0 && self.rel <= self.bound
    }

    /// Admits `factor` times the fp32 algorithm's own error `floor` (see [`soft32`]).
    pub fn admit_algorithm_floor(&mut self, floor: f64, factor: f64) {
        self.algorithm_floor = floor;
        self.bound = self.bound.max(factor * floor);
    }
}

/// Compares `got` (already widened to f64) with the f64 reference `want` for storage type `T`.
pub fn compare<T: Element>(got: &[f64], want: &[f64]) -> Comparison {
    let rounded: Vec<f64> = want.iter().map(|&x| T::from_f64(x).to_f64()).collect();
    let floor = rel_frobenius(&rounded, want);
    Comparison {
        rel: rel_frobenius(got, want),
        floor,
        bound: T::DTYPE.tolerance().max(2.0 * floor),
        non_finite: got.iter().filter(|x| !x.is_finite()).count(),
        algorithm_floor: 0.0,
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rel. Frobenius {:.3e} (bound {:.1e}; output-dtype rounding floor {:.1e}",
            self.rel, self.bound, self.floor
        )?;
        if self.algorithm_floor > 0.0 {
            write!(f, "; fp32 algorithm floor {:.1e}", self.algorithm_floor)?;
        }
        write!(f, "), non-finite {}", self.non_finite)
    }
}
