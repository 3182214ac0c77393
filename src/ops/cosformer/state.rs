//! The cosFormer decode state: prefill (the causal operator that also returns the state) and
//! one-token steps.

use super::launch::{grid_dim, kernel_params, queue, FAMILY, THREADS};
use super::plan::{state_len, Plan};
use super::CosformerParams;
use crate::error::{Error, Result};
use crate::ops::{
    check_raw, check_workspace, launch, ptr_of_mut, with_raw, RawTensor, TensorMut, TensorRef,
    MAX_HEAD_DIM, MAX_LEN, MAX_SLICES,
};
use crate::runtime::{oom_or, Runtime};
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// The shape of a decode state and the checks of calls against it (pure, no GPU).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StateShape {
    pub b: usize,
    pub h: usize,
    pub d: usize,
    pub dv: usize,
    /// The fixed angle denominator.
    pub m: usize,
    pub relu: bool,
    pub eps: f64,
}

impl StateShape {
    /// Validates a state for B·H sequences; `params.m` must be given (decode needs a fixed M).
    pub fn new(b: usize, h: usize, d: usize, dv: usize, params: &CosformerParams) -> Result<Self> {
        let m = params
            .m
            .ok_or_else(|| Error::param("M", "None", "decode needs a fixed M"))?;
        params.resolve_m(1, 1)?;
        if m > MAX_LEN {
            return Err(Error::param("M", m, format!("must be <= {MAX_LEN}")));
        }
        if !((params.eps as f32) > 0.0 && (params.eps as f32).is_finite()) {
            return Err(Error::param(
                "eps",
                params.eps,
                "must be a positive, finite fp32 value",
            ));
        }
        for (arg, x) in [("B", b), ("H", h)] {
            if x == 0 {
                return Err(Error::param(arg, x, "must be >= 1"));
            }
        }
        for (arg, x) in [("D", d), ("Dv", dv)] {
            if x == 0 || x > MAX_HEAD_DIM {
                return Err(Error::param(
                    arg,
                    x,
                    format!("must be in 1..={MAX_HEAD_DIM}"),
                ));
            }
        }
        if b.checked_mul(h).is_none_or(|bh| bh > MAX_SLICES) {
            return Err(Error::param("B·H", b.saturating_mul(h), "exceeds 2^30"));
        }
        Ok(StateShape {
            b,
            h,
            d,
            dv,
            m,
            relu: params.relu,
            eps: params.eps,
        })
    }

    /// fp32 elements of the whole state.
    pub fn len(&self) -> usize {
        self.b * self.h * state_len(self.d, self.dv)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn params(&self) -> CosformerParams {
        CosformerParams {
            m: Some(self.m),
            causal: true,
            relu: self.relu,
            eps: self.eps,
        }
    }

    /// Checks that q, k, v, o describe `n` new tokens of every sequence of this state.
    fn check_tensors(&self, q: &Layout, k: &Layout, v: &Layout, o: &Layout) -> Result<()> {
        let n = q.dims.n;
        for (arg, l, d) in [
            ("q", q, self.d),
            ("k", k, self.d),
            ("v", v, self.dv),
            ("o", o, self.dv),
        ] {
            let want = Dims::new(self.b, self.h, n, d);
            if l.dims != want {
                return Err(Error::shape(
                    "state",
                    format!(
                        "state is for B={}, H={}, D={}, Dv={}, but `{arg}` is {} (expected {want})",
                        self.b, self.h, self.d, self.dv, l.dims
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_room(&self, pos: usize, n: usize) -> Result<()> {
        if pos.checked_add(n).is_none_or(|end| end > self.m) {
            return Err(Error::param(
                "M",
                self.m,
                format!("{pos} tokens seen + {n} new would pass M"),
            ));
        }
        Ok(())
    }

    /// The causal plan of a prefill of `q.dims.n` tokens after `pos` tokens.
    pub fn prefill_plan(
        &self,
        pos: usize,
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
    ) -> Result<Plan> {
        self.check_tensors(q, k, v, o)?;
        self.check_room(pos, q.dims.n)?;
        Plan::new(q, k, v, o, &self.params())
    }

    /// Checks a decode step after `pos` tokens: one token (`[B,H,1,D]`, `[B,H,1,Dv]`).
    pub fn check_step(
        &self,
        pos: usize,
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
    ) -> Result<()> {
        if q.dims.n != 1 {
            return Err(Error::shape(
                "q",
                format!("a step takes one token per sequence, got {}", q.dims),
            ));
        }
        self.check_tensors(q, k, v, o)?;
        self.check_room(pos, 1)?;
        for (arg, l) in [("q", q), ("k", k), ("v", v), ("o", o)] {
            let span = l.span().unwrap_or(usize::MAX);
            l.validate(arg, span, MAX_HEAD_DIM)?;
        }
        Ok(())
    }
}

/// Causal decode state of B·H sequences at a fixed M: fp32 `KVs, KVc, zs, zc` per (b,h) on the
/// device, and the number of tokens seen so far (on the host).
pub struct State {
    shape: StateShape,
    pos: usize,
    buf: CudaSlice<f32>,
}

impl State {
    /// A zeroed state (queued on `stream`).
    pub fn new(
        rt: &Runtime,
        stream: &Arc<CudaStream>,
        b: usize,
        h: usize,
        d: usize,
        dv: usize,
        params: &CosformerParams,
    ) -> Result<Self> {
        let _ = rt;
        let shape = StateShape::new(b, h, d, dv, params)?;
        let buf = stream
            .alloc_zeros::<f32>(shape.len())
            .map_err(|e| oom_or(e, shape.len() * 4))?;
        Ok(State { shape, pos: 0, buf })
    }

    pub fn shape(&self) -> &StateShape {
        &self.shape
    }

    /// Tokens consumed so far; the next token sits at position `pos() + 1`.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The device buffer `[B·H][state_len(D, Dv)]`.
    pub fn buffer(&self) -> &CudaSlice<f32> {
        &self.buf
    }

    /// Copies the state to the host (synchronizes `stream`).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>> {
        Ok(stream.clone_dtoh(&self.buf)?)
    }

    /// Workspace bytes of a prefill of `n` tokens.
    pub fn workspace_bytes(&self, n: usize) -> Result<usize> {
        let s = &self.shape;
        let q = Layout::contiguous(Dims::new(s.b, s.h, n, s.d));
        let v = Layout::contiguous(Dims::new(s.b, s.h, n, s.dv));
        Ok(Plan::new(&q, &q, &v, &v, &s.params())?.workspace_bytes())
    }

    /// Consumes `n` tokens (`q, k [B,H,n,D]`, `v, o [B,H,n,Dv]`), writing their causal outputs;
    /// positions continue from [`State::pos`].
    ///
    /// # Safety
    /// As [`super::forward_raw`]; the state must not be in use by work on another stream.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn prefill_raw(
        &mut self,
        rt: &Runtime,
        stream: &CudaStream,
        dtype: DType,
        q: RawTensor,
        k: RawTensor,
        v: RawTensor,
        o: RawTensor,
        workspace: u64,
        workspace_len: usize,
    ) -> Result<()> {
        let plan = self
            .shape
            .prefill_plan(self.pos, &q.layout, &k.layout, &v.layout, &o.layout)?;
        check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
        check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
        let mut p = kernel_params(&plan, &q, &k, &v, &o);
        let (sp, _gs) = ptr_of_mut(&mut self.buf, stream);
        p.state = sp;
        p.state_in = 1;
        p.pos0 = self.pos as i32;
        p.m = self.shape.m as i32;
        // SAFETY: validated plan; the state buffer holds B·H·state_len floats (made by `new`).
        unsafe { queue(rt, stream, &plan, dtype, p, workspace)? };
        self.pos += plan.n;
        Ok(())
    }

    /// One decode step: `q, k [B,H,1,D]`, `v, o [B,H,1,Dv]` at position `pos() + 1`.
    ///
    /// # Safety
    /// As [`super::forward_raw`] (no workspace); the state must not be in use by work on another stream.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn step_raw(
        &mut self,
        rt: &Runtime,
        stream: &CudaStream,
        dtype: DType,
        q: RawTensor,
        k: RawTensor,
        v: RawTensor,
        o: RawTensor,
    ) -> Result<()> {
        self.shape
            .check_step(self.pos, &q.layout, &k.layout, &v.layout, &o.layout)?;
        check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
        let s = self.shape;
        let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout, &s.params())?;
        let mut p = kernel_params(&plan, &q, &k, &v, &o);
        let (sp, _gs) = ptr_of_mut(&mut self.buf, stream);
        p.state = sp;
        p.pos0 = self.pos as i32;
        p.m = s.m as i32;
        let f = rt.function(FAMILY, &format!("cosformer_step_{}", dtype.name()))?;
        // SAFETY: one CTA per (b,h) reads one row of q, k, v and writes one row of o (validated
        // layouts) and updates its own state slice; D, Dv ≤ 256 = threads per CTA.
        unsafe { launch(stream, &f, (grid_dim(s.b * s.h), 1, 1), THREADS, &p)? };
        self.pos += 1;
        Ok(())
    }

    /// Safe [`State::prefill_raw`] over device buffers (`workspace` allocated when `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn prefill<T: Element>(
        &mut self,
        rt: &Runtime,
        stream: &Arc<CudaStream>,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        o: TensorMut<'_, T>,
        workspace: Option<&mut CudaSlice<u8>>,
    ) -> Result<()> {
        let plan = self
            .shape
            .prefill_plan(self.pos, &q.layout, &k.layout, &v.layout, &o.layout)?;
        let ws = Some((workspace, plan.workspace_bytes()));
        with_raw(rt, stream, (q, k, v, o), ws, |t, wp, wl| {
            // SAFETY: live allocations of this context, lengths checked against their layouts;
            // `o` is borrowed mutably, so it cannot alias the inputs; the state is borrowed
            // mutably.
            unsafe { self.prefill_raw(rt, stream, T::DTYPE, t.q, t.k, t.v, t.o, wp, wl) }
        })
    }

    /// Safe [`State::step_raw`] over device buffers.
    pub fn step<T: Element>(
        &mut self,
        rt: &Runtime,
        stream: &Arc<CudaStream>,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        o: TensorMut<'_, T>,
    ) -> Result<()> {
        with_raw(rt, stream, (q, k, v, o), None, |t, _, _| {
            // SAFETY: as in `prefill`.
            unsafe { self.step_raw(rt, stream, T::DTYPE, t.q, t.k, t.v, t.o) }
        })
    }
}
