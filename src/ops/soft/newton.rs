//! The batched Newton–Raphson pseudo-inverse of SPEC §1.4: one launch with the matrices in
//! shared memory (one CTA or a cluster per matrix), or one launch per GEMM.

use super::{
    check_m, grid_dim, grid_yz, KernelParams, SoftParams, MAX_NEWTON_CLUSTERS, NEWTON_CL,
    NEWTON_CLUSTER_MAX_M, NEWTON_CLUSTER_MIN_M, NEWTON_CL_SMEM, NEWTON_CL_THREADS, NEWTON_FAMILY,
    NEWTON_SMEM_MAX_M, NEWTON_TILE, THREADS,
};
use crate::error::{Error, Result};
use crate::ops::{
    check_f32_buffer, check_workspace, launch, launch_smem, try_launch_smem, with_matrices,
};
use crate::runtime::Runtime;
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// Which form of the Newton iteration runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NewtonPath {
    /// One launch when m ≤ [`NEWTON_SMEM_MAX_M`] and the device's shared memory holds it.
    #[default]
    Auto,
    /// All T steps in one launch, matrices in shared memory (m ≤ [`NEWTON_SMEM_MAX_M`]); for
    /// [`NEWTON_CLUSTER_MIN_M`] ≤ m ≤ [`NEWTON_CLUSTER_MAX_M`] on sm_90 a cluster of 8 CTAs per
    /// matrix, all-gathering with `st.async` (the kernel of [`NewtonPath::ClusterAsync`], the
    /// fastest of the three cluster forms on the H100: 4.15 µs per matrix at m = 64, B·H = 16,
    /// against 4.52 for [`NewtonPath::ClusterEarlyArrive`] and 5.02 for
    /// [`NewtonPath::ClusterLateArrive`]); bit-identical to one CTA, which runs where the cluster
    /// kernel is absent or its launch is refused.
    OneLaunch,
    /// As [`NewtonPath::OneLaunch`], always one CTA per matrix (no cluster).
    OneLaunchCta,
    /// The cluster of 8 CTAs per matrix with remote stores and a cluster barrier per step, each
    /// CTA arriving right after its stores and waiting before its next read (the one-launch
    /// default until the H100 measured [`NewtonPath::ClusterAsync`] faster). Bit-identical to
    /// [`NewtonPath::OneLaunch`]; cluster only, as [`NewtonPath::ClusterLateArrive`].
    ClusterEarlyArrive,
    /// The cluster kernel of [`NewtonPath::ClusterEarlyArrive`] with its CTAs arriving on the cluster
    /// barrier one product later in each step (after the next step's first product, not right
    /// after their stores). The same operations in the same order: bit-identical to
    /// `OneLaunch`. Which order is faster is measured, not assumed
    /// (`sofa bench --op soft_newton --newton-path one-launch,cluster-late`). Cluster only: an
    /// error where it cannot run (m outside [`NEWTON_CLUSTER_MIN_M`]..=[`NEWTON_CLUSTER_MAX_M`],
    /// a device below sm_90, a refused cluster launch), never the one-CTA kernel instead.
    ClusterLateArrive,
    /// The cluster kernel of [`NewtonPath::OneLaunch`] with its all-gather done by `st.async`
    /// into mbarriers of the receiving CTAs instead of remote stores and a cluster barrier per
    /// step (no cluster-scope release fence per step). The same operations in the same order:
    /// bit-identical to `OneLaunch`. Measured beside it
    /// (`sofa bench --op soft_newton --newton-path one-launch,cluster-async`). Cluster only, as
    /// [`NewtonPath::ClusterLateArrive`].
    ClusterAsync,
    /// One launch per GEMM over a global workspace (any m ≤ [`MAX_M`](super::MAX_M)).
    MultiLaunch,
}

impl NewtonPath {
    /// A cluster kernel by name, with no fallback to one CTA per matrix.
    fn is_cluster_only(self) -> bool {
        matches!(
            self,
            NewtonPath::ClusterEarlyArrive
                | NewtonPath::ClusterLateArrive
                | NewtonPath::ClusterAsync
        )
    }

    /// All T steps in one launch, the matrices in shared memory (a cluster or one CTA each).
    fn is_one_launch(self) -> bool {
        !matches!(self, NewtonPath::Auto | NewtonPath::MultiLaunch)
    }
}

/// m within the cluster kernels' range.
fn cluster_m(m: usize) -> bool {
    (NEWTON_CLUSTER_MIN_M..=NEWTON_CLUSTER_MAX_M).contains(&m)
}

/// Dynamic shared memory of the one-launch Newton kernel: Â, Z and Z·Â with an odd leading dim
/// (saturating: an m far beyond [`NEWTON_SMEM_MAX_M`] gets a size no device has, not a panic).
pub fn newton_smem_bytes(m: usize) -> usize {
    12usize.saturating_mul(m).saturating_mul(m | 1)
}

/// Static shared memory of the one-launch Newton kernel (row sums and α; ptxas reports 1040
/// bytes), rounded up: it must fit beside the dynamic part.
const NEWTON_STATIC_SMEM: usize = 2048;

/// True when the one-launch Newton kernel can run for m on a device with `smem_optin` bytes of
/// shared memory per block.
pub fn newton_fits_on_chip(m: usize, smem_optin: usize) -> bool {
    m <= NEWTON_SMEM_MAX_M && newton_smem_bytes(m) + NEWTON_STATIC_SMEM <= smem_optin
}

/// The fp32 Newton parameters of SPEC §1.4, checked.
#[derive(Clone, Copy, Debug, PartialEq)]
struct NewtonScalars {
    iters: usize,
    ridge: f32,
    alpha_scale: f32,
}

impl NewtonScalars {
    fn new(p: &SoftParams) -> Result<Self> {
        if p.newton_iters == 0 {
            return Err(Error::param("newton_iters", 0, "must be >= 1"));
        }
        if p.newton_iters > i32::MAX as usize {
            return Err(Error::param(
                "newton_iters",
                p.newton_iters,
                "must fit in 32 bits",
            ));
        }
        let ridge = p.ridge as f32;
        if !(p.ridge >= 0.0 && ridge.is_finite()) {
            return Err(Error::param(
                "ridge",
                p.ridge,
                "must be >= 0 and finite in fp32",
            ));
        }
        let alpha_scale = p.alpha_scale as f32;
        if !(alpha_scale > 0.0 && alpha_scale.is_finite()) {
            return Err(Error::param(
                "alpha_scale",
                p.alpha_scale,
                "must be > 0 and finite in fp32",
            ));
        }
        Ok(NewtonScalars {
            iters: p.newton_iters,
            ridge,
            alpha_scale,
        })
    }
}

/// A validated batched Newton–Raphson pseudo-inverse: `batch` matrices of `m×m` fp32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NewtonPlan {
    pub batch: usize,
    pub m: usize,
    /// The resolved path: [`NewtonPath::OneLaunch`], [`NewtonPath::OneLaunchCta`],
    /// [`NewtonPath::ClusterLateArrive`], [`NewtonPath::ClusterAsync`] or
    /// [`NewtonPath::MultiLaunch`].
    pub path: NewtonPath,
    scalars: NewtonScalars,
    /// The one-launch kernels' matrices in flight (clusters or CTAs); each takes the rest in turn.
    in_flight: usize,
}

impl NewtonPlan {
    /// Checks the shape and the Newton parameters of `params` (its landmarks are not used) and
    /// resolves `path` for a device allowing `smem_optin` bytes of shared memory per block.
    pub fn new(
        batch: usize,
        m: usize,
        params: &SoftParams,
        path: NewtonPath,
        smem_optin: usize,
    ) -> Result<Self> {
        if batch == 0 || batch > crate::ops::MAX_SLICES {
            return Err(Error::param("batch", batch, "must be in 1..=2^30"));
        }
        check_m(m)?;
        let scalars = NewtonScalars::new(params)?;
        let fits = newton_fits_on_chip(m, smem_optin);
        let path = match path {
            NewtonPath::Auto if fits => NewtonPath::OneLaunch,
            NewtonPath::Auto => NewtonPath::MultiLaunch,
            p if p.is_one_launch() && !fits => {
                return Err(Error::param(
                    "path",
                    format!("{path:?}"),
                    format!(
                        "m = {m} needs m <= {NEWTON_SMEM_MAX_M} and {} bytes of shared memory \
                         (device allows {smem_optin})",
                        newton_smem_bytes(m) + NEWTON_STATIC_SMEM
                    ),
                ))
            }
            p if p.is_cluster_only() && !cluster_m(m) => {
                return Err(Error::param(
                    "path",
                    format!("{path:?}"),
                    format!(
                        "the cluster kernels take {NEWTON_CLUSTER_MIN_M} <= m <= \
                         {NEWTON_CLUSTER_MAX_M}, not m = {m}"
                    ),
                ))
            }
            p => p,
        };
        Ok(NewtonPlan {
            batch,
            m,
            path,
            scalars,
            in_flight: MAX_NEWTON_CLUSTERS,
        })
    }

    /// Caps the one-launch kernels' grid at `n` matrices in flight (`n` clusters of 8 CTAs, or
    /// `n` CTAs of the one-CTA kernel; default and largest 65536): each then takes every n-th
    /// matrix in turn, with the same results. For an engine that leaves SMs to its other work,
    /// and for tests of that loop. The multi-launch path ignores it.
    pub fn with_max_in_flight(mut self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::param("max_in_flight", n, "must be at least 1"));
        }
        self.in_flight = n.min(MAX_NEWTON_CLUSTERS);
        Ok(self)
    }

    /// An error when a one-launch plan was made for a device with more shared memory than `rt`'s.
    pub(super) fn check_device(&self, rt: &Runtime) -> Result<()> {
        if self.path.is_one_launch() && !newton_fits_on_chip(self.m, rt.info().smem_per_block_optin)
        {
            return Err(Error::param(
                "path",
                format!("{:?}", self.path),
                "the plan was made for a device with more shared memory",
            ));
        }
        let (major, minor) = rt.info().compute_capability;
        if self.path.is_cluster_only() && major < 9 {
            return Err(Error::param(
                "path",
                format!("{:?}", self.path),
                format!("the cluster kernels need sm_90 or later (device: sm_{major}{minor})"),
            ));
        }
        Ok(())
    }

    /// fp32 elements of the input A and of the output Z.
    pub fn len(&self) -> usize {
        self.batch * self.m * self.m
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Scratch bytes: Â, Z·Â and a second Z for the multi-launch path; none for one launch.
    pub fn workspace_bytes(&self) -> usize {
        match self.path {
            NewtonPath::MultiLaunch => 3 * self.len() * 4,
            _ => 0,
        }
    }

    /// Queues the iteration: A at `a`, Z to `z`, scratch at `ws` (`workspace_bytes`). Returns how
    /// many CTAs the one-launch kernel keeps resident while it runs (0 for the multi-launch
    /// path): that kernel lets the next launch start beside it (`launch_smem_beside`), which can
    /// size itself to the SM slots left.
    ///
    /// # Safety
    /// `a` holds `len()` readable floats, `z` `len()` writable floats not aliasing `a` or `ws`,
    /// `ws` holds `workspace_bytes()` bytes, 4-byte aligned; all valid until the work completes.
    pub(super) unsafe fn queue(
        &self,
        rt: &Runtime,
        stream: &CudaStream,
        a: u64,
        z: u64,
        ws: u64,
    ) -> Result<usize> {
        let m = self.m;
        let mut p = KernelParams {
            a,
            z,
            b: self.batch as i32,
            h: 1,
            m: m as i32,
            iters: self.scalars.iters as i32,
            ridge: self.scalars.ridge,
            alpha_scale: self.scalars.alpha_scale,
            ..Default::default()
        };
        let cluster = match self.path {
            NewtonPath::OneLaunch | NewtonPath::ClusterAsync => Some("newton_pinv_cl_async_f32"),
            NewtonPath::ClusterEarlyArrive => Some("newton_pinv_cl_f32"),
            NewtonPath::ClusterLateArrive => Some("newton_pinv_cl_late_f32"),
            _ => None,
        };
        let strict = self.path.is_cluster_only();
        if strict {
            self.check_device(rt)?; // never the one-CTA kernel under a cluster path's name
        }
        if let Some(name) = cluster.filter(|_| cluster_m(m) && rt.info().compute_capability.0 >= 9)
        {
            // Without the kernel, or where the driver refuses the cluster launch (which queues
            // nothing), OneLaunch runs the one-CTA kernel; the cluster-only paths say so.
            match rt.function(NEWTON_FAMILY, name) {
                Ok(f) => {
                    let ctas = self.batch.min(self.in_flight) * NEWTON_CL;
                    let grid = (ctas as u32, 1, 1);
                    let smem = match rt.check_dynamic_smem(&f, NEWTON_CL_SMEM) {
                        Err(e) if strict => return Err(e),
                        r => r.is_ok(),
                    };
                    // SAFETY: the caller's contract; a cluster per matrix with the shared memory
                    // the kernel is built for.
                    if smem
                        && unsafe {
                            try_launch_smem(stream, &f, grid, NEWTON_CL_THREADS, NEWTON_CL_SMEM, &p)
                        }?
                    {
                        return Ok(ctas);
                    }
                    if strict {
                        return Err(Error::param(
                            "path",
                            format!("{:?}", self.path),
                            "the driver refused the cluster launch",
                        ));
                    }
                }
                Err(e) if strict => return Err(e),
                Err(_) => {}
            }
        }
        if self.path.is_one_launch() {
            let tile = [16, 32, 64, 128]
                .into_iter()
                .find(|&t| m <= t)
                .unwrap_or(NEWTON_SMEM_MAX_M);
            let f = rt.function(NEWTON_FAMILY, &format!("newton_pinv_t{tile}_f32"))?;
            let smem = newton_smem_bytes(m) as u32;
            rt.check_dynamic_smem(&f, smem)?;
            // SAFETY: the caller's contract; m ≤ tile and the shared memory was sized for m.
            let grid = grid_dim(self.batch.min(self.in_flight));
            return unsafe { launch_smem(stream, &f, (grid, 1, 1), THREADS, smem, &p) }
                .map(|()| grid as usize);
        }
        let mat = (self.len() * 4) as u64;
        let (ahat, tbuf, zalt) = (ws, ws + mat, ws + 2 * mat);
        // Z_k lives in `z` when T − k is even, so that Z_T lands in `z`.
        let iters = self.scalars.iters;
        let zbuf = |k: usize| if (iters - k) % 2 == 0 { z } else { zalt };
        let init = rt.function(NEWTON_FAMILY, "newton_init_f32")?;
        let gemm = rt.function(NEWTON_FAMILY, "newton_gemm_f32")?;
        let tiles = m.div_ceil(NEWTON_TILE);
        let ggrid = ((tiles * tiles) as u32, grid_yz(self.batch), 1);
        p.ahat = ahat;
        p.z = zbuf(0);
        // SAFETY: the caller's contract; the workspace holds Â, Z·Â and the second Z, and no
        // GEMM writes a buffer it reads.
        unsafe {
            launch(stream, &init, (grid_dim(self.batch), 1, 1), THREADS, &p)?;
            for k in 0..iters {
                let (zk, zn) = (zbuf(k), zbuf(k + 1));
                p.gemm_mode = 0;
                (p.gemm_a, p.gemm_b, p.gemm_c, p.gemm_z) = (zk, ahat, tbuf, 0);
                launch(stream, &gemm, ggrid, THREADS, &p)?;
                p.gemm_mode = 1;
                (p.gemm_a, p.gemm_b, p.gemm_c, p.gemm_z) = (tbuf, zk, zn, zk);
                launch(stream, &gemm, ggrid, THREADS, &p)?;
            }
        }
        Ok(0)
    }
}

/// Batched Newton–Raphson pseudo-inverse on raw device pointers: `a` and `z` hold
/// `plan.len()` fp32 values each (`[batch][m][m]`).
///
/// # Safety
/// `a` must address `a_len ≥ plan.len()` readable floats and `z` `z_len ≥ plan.len()` writable
/// floats of this runtime's context, not aliasing each other or the workspace (`workspace_len ≥
/// plan.workspace_bytes()` bytes, 4-byte aligned); all valid until the work on `stream` completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn newton_pinv_raw(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &NewtonPlan,
    a: u64,
    a_len: usize,
    z: u64,
    z_len: usize,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    check_f32_buffer("a", a, a_len, plan.len())?;
    check_f32_buffer("z", z, z_len, plan.len())?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
    plan.check_device(rt)?;
    // SAFETY: forwarded contract; buffers checked above.
    unsafe { plan.queue(rt, stream, a, z, workspace) }.map(|_| ())
}

/// `Z` = T Newton steps on `A + λI` (SPEC §1.4) for `batch` fp32 `m×m` matrices `a`
/// (`[batch][m][m]`), into `z`. `workspace` may be `None` (then allocated when needed).
#[allow(clippy::too_many_arguments)]
pub fn newton_pinv(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    params: &SoftParams,
    batch: usize,
    m: usize,
    path: NewtonPath,
    a: &CudaSlice<f32>,
    z: &mut CudaSlice<f32>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = NewtonPlan::new(batch, m, params, path, rt.info().smem_per_block_optin)?;
    let bytes = plan.workspace_bytes();
    with_matrices(
        rt,
        stream,
        a,
        z,
        workspace,
        bytes,
        |ap, al, zp, zl, wp, wl| {
            // SAFETY: live allocations of this context with their lengths; `z` and the workspace are
            // borrowed mutably, so nothing aliases.
            unsafe { newton_pinv_raw(rt, stream, &plan, ap, al, zp, zl, wp, wl) }
        },
    )
}
