//! The tensor-core paths: their launch geometry (mirrors cos_tc_* in kernels/cosformer_tc.cuh),
//! when they apply, and their queueing (separate launches, the chained causal launch, the
//! one-launch kernels of short sequences).

use super::launch::{grid_dim, KernelParams, FAMILY, MAX_GRID_YZ, THREADS};
use super::plan::{state_len, Plan, BLOCK, SHORT_CL};
use crate::error::Result;
use crate::ops::{
    ctas_per_slice, launch, launch_smem, one_wave_rows, rows_16b_aligned, try_launch_smem, zero_u32,
};
use crate::runtime::Runtime;
use crate::tensor::DType;
use cudarc::driver::CudaStream;

/// Head dims (D == Dv) with tensor-core non-causal reduce/map passes for f16/bf16 and
/// 16-byte-aligned rows (D = 128 on sm_90 only: [`TC_SM90_DIMS`]); causal: [`TC_CAUSAL_DIMS`].
const TC_DIMS: [usize; 6] = [32, 48, 64, 80, 96, 128];
/// Tensor-core head dims built for sm_90 only (on sm_80 the bf16 map would spill).
const TC_SM90_DIMS: [usize; 1] = [128];
const TC_CAUSAL_DIMS: [usize; 3] = [32, 64, 128];
/// Causal head dims with the chained one-launch kernel (cosformer_causal_chain_tc*).
const TC_CHAIN_DIMS: [usize; 2] = [64, 128];
const TC_ROWS: usize = 32; // COS_TC_ROWS
const TC_MAP_THREADS: u32 = 128; // COS_TC_MAP_WARPS · 32
const TC_MAP_ROWS: usize = 64; // COS_TC_MAP_WARPS · 16
const TC_CAUSAL_THREADS: u32 = 256; // COS_TC_CAUSAL_WARPS · 32
/// Causal tensor-core CTAs aimed for (one per chunk and (b,h)): a few waves of one CTA per SM.
const TC_CAUSAL_CTAS: usize = 512;
/// Least `rows_per_chunk · B·H` for which a default plan takes the chained launch. A link of the
/// chain (see the flag, read the previous prefix, write its own, fence) takes ~2–3 µs. The next
/// chunk of a slice starts B·H tickets later, i.e. after ≈ (a CTA's time) · B·H / 132 SMs, and a
/// CTA streams ≈ 768 B per row (K, V, then Q, K, V, O) at ≈ 22 GB/s per SM, ≈ 35 ns per row.
/// The chain keeps up when rows · B·H · 35 ns / 132 ≥ ~3.5 µs: at B·H = 16 that is chunks of
/// ≥ 1024 rows (N ≥ 32k with 32 chunks per slice); with fewer slices or shorter chunks the
/// separate launches are faster.
const CHAIN_MIN_ROWS_SLICES: usize = 16384;
/// Clusters launched by the one-launch path (each then walks (b,h) slices).
const MAX_CLUSTERS: usize = 1 << 16;

// Launch geometry (mirrors cos_tc_* in kernels/cosformer_tc.cuh).
fn state_ld(d: usize) -> usize {
    2 * d + 24
}
fn reduce_threads(d: usize) -> u32 {
    (d / 16 * if d >= 64 { 2 } else { 1 } * 32) as u32
}
/// Stages of the reduce's cp.async ring of K and V tiles (cos_tc_reduce_stages).
fn reduce_stages(d: usize) -> usize {
    if d == 80 {
        2
    } else {
        4
    }
}
fn reduce_smem(d: usize) -> u32 {
    (reduce_stages(d) * TC_ROWS * 2 * (d + 8) * 2) as u32
}
fn map_smem(d: usize) -> u32 {
    ((d * state_ld(d) + 2 * TC_MAP_ROWS * (d + 8)) * 2) as u32
}
/// The chained causal kernel (cos_tc_chain_smem): the larger of the reduce and the causal pass.
fn chain_smem(d: usize) -> u32 {
    causal_smem(d).max(reduce_smem(d))
}
/// Partial-state elements each CTA of a short plan's cluster owns (cos_tc_short_per).
fn short_per(d: usize) -> usize {
    (2 * d * d + 2 * d).div_ceil(SHORT_CL).div_ceil(2) * 2
}
/// The one-launch causal kernel (cos_tc_short_causal_smem): the chained kernel's region, then the
/// partials pushed by the cluster's CTAs and the CTA's prefix state (fp32).
fn short_causal_smem(d: usize) -> u32 {
    chain_smem(d) + ((SHORT_CL * short_per(d) + state_len(d, d)) * 4) as u32
}
/// The one-launch kernel (cos_tc_short_smem): the reduce's staging, later two query tiles of
/// the reduce's warps; then the partials pushed by the cluster's CTAs (fp32, 8 × its share of the
/// state), later the 16-bit state operand.
fn short_smem(d: usize) -> u32 {
    let per = short_per(d);
    let stage = (reduce_smem(d) as usize).max(reduce_threads(d) as usize * (d + 8) * 2);
    (stage + (SHORT_CL * per * 4).max(d * state_ld(d) * 2)) as u32
}
/// Value columns per causal CTA (cos_tc_causal_dv): D = 128 splits them between two CTAs.
fn causal_dv(d: usize) -> usize {
    d.min(64)
}
/// Causal tensor-core CTAs per chunk: one per share of the value columns (1 for head dims
/// without tensor-core causal kernels).
pub(super) fn causal_shares(d: usize) -> usize {
    if TC_CAUSAL_DIMS.contains(&d) {
        d / causal_dv(d)
    } else {
        1
    }
}
fn causal_smem(d: usize) -> u32 {
    let dv = causal_dv(d);
    ((4 * BLOCK * (d + 8) + 3 * BLOCK * (dv + 8) + d * state_ld(dv)) * 2) as u32
}
/// Whether the tensor-core kernels apply: f16/bf16, D == Dv with a tensor-core build for this
/// device (`sm90`: compute capability ≥ 9), and every row of q, k, v, o 16-byte aligned
/// (pointers and batch/head/seq strides).
pub(super) fn tensor_cores(plan: &Plan, dtype: DType, p: &KernelParams, sm90: bool) -> bool {
    let dims: &[usize] = if plan.causal {
        &TC_CAUSAL_DIMS
    } else {
        &TC_DIMS
    };
    let aligned = rows_16b_aligned(
        &[p.q, p.k, p.v, p.o],
        &[
            p.q_sb, p.q_sh, p.q_sn, p.k_sb, p.k_sh, p.k_sn, p.v_sb, p.v_sh, p.v_sn, p.o_sb, p.o_sh,
            p.o_sn,
        ],
    );
    let built = sm90 || !TC_SM90_DIMS.contains(&plan.d);
    dtype != DType::F32 && plan.d == plan.dv && dims.contains(&plan.d) && built && aligned
}

/// Causal chunk rows of the tensor-core pass: the plan's when given explicitly, else a multiple of
/// the plan's chunk (so the workspace, sized for the plan's chunks, holds the fewer chunks) long
/// enough that there are about [`TC_CAUSAL_CTAS`] chunks in all: each CTA carries its state
/// across the chunk's blocks.
fn tc_causal_rows(plan: &Plan) -> usize {
    if plan.explicit_rows {
        return plan.rows_per_chunk;
    }
    let slices = plan.b * plan.h * causal_shares(plan.d);
    let want = plan.n.div_ceil(TC_CAUSAL_CTAS.div_ceil(slices));
    want.max(1).div_ceil(plan.rows_per_chunk) * plan.rows_per_chunk
}

/// Non-causal key-chunk rows of the tensor-core reduce: one wave of its CTAs (`slots` resident),
/// [`one_wave_rows`]. The plan's 1024-CTA chunking wrote 64 partials of 33 KB per slice at
/// B·H = 16 (34 MB) where one wave on an H100 needs 16.
fn tc_reduce_rows(plan: &Plan, slots: usize) -> usize {
    one_wave_rows(plan.chunks, plan.rows_per_chunk, slots, plan.b * plan.h)
}

/// Queues the chained causal kernel (D ∈ {64, 128}): a memset of its flags, then one launch of
/// `B·H·chunks·shares` CTAs (D = 128: two shares of the value columns per chunk). False when the
/// plan does not take it (not chained, another D, a default chunking below
/// [`CHAIN_MIN_ROWS_SLICES`], more CTAs than a grid holds, or D = 128 continuing a state in a
/// single chunk, where one share could overwrite the state before the other has read it):
/// nothing was queued.
///
/// # Safety
/// As [`queue_tc`], with `p.partial`, `p.chunks` and `p.rows_per_chunk` set for the causal pass
/// (`p.chunks` ≤ the plan's chunk slots).
unsafe fn queue_chained(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    p: &KernelParams,
) -> Result<bool> {
    let (bh, d) = (plan.b * plan.h, plan.d);
    let shares = causal_shares(d);
    let states = bh * p.chunks as usize;
    let ctas = states * shares;
    let slow_chain =
        !plan.explicit_rows && (p.rows_per_chunk as usize) * bh < CHAIN_MIN_ROWS_SLICES;
    let shared_state = shares > 1 && p.state_in != 0 && p.chunks == 1;
    if !plan.chained
        || !TC_CHAIN_DIMS.contains(&d)
        || slow_chain
        || shared_state
        || ctas > i32::MAX as usize
    {
        return Ok(false);
    }
    let f = rt.function(
        FAMILY,
        &format!("cosformer_causal_chain_tc{d}_{}", dtype.name()),
    )?;
    // The reduce's staging and the causal pass's buffers share the dynamic shared memory.
    let smem = chain_smem(d);
    rt.check_dynamic_smem(&f, smem)?;
    // The flags (one per chunk state and share) and the ticket counter follow the partials.
    let flags = p.partial + (states * state_len(d, d) * 4) as u64;
    // SAFETY: the workspace holds the plan's slots' states and slots·shares flags + 1 after them;
    // the p.chunks ≤ slots states used end where these flags begin, and the grid covers every
    // chunk and share.
    unsafe {
        zero_u32(stream, flags, ctas + 1)?;
        launch_smem(stream, &f, (ctas as u32, 1, 1), TC_CAUSAL_THREADS, smem, p)?;
    }
    Ok(true)
}

/// Queues the one-launch kernel of a short plan (sm_90 thread-block clusters; causal: D = 64,
/// where the reduce and the causal pass share 8 warps). False when it does not apply, the build
/// has no sm_90 image of it for this device, the device has less shared memory per block than it
/// needs, or the driver refused the launch (no room for a cluster of 8): nothing was queued, the
/// separate launches must run.
///
/// # Safety
/// As [`queue_tc`] (the one-launch kernels read neither `p.partial` nor the workspace's state).
unsafe fn queue_one_launch(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    mut p: KernelParams,
) -> Result<bool> {
    let d = plan.d;
    if !plan.one_launch || rt.info().compute_capability.0 < 9 || (plan.causal && d != 64) {
        return Ok(false);
    }
    let (kernel, smem, threads, rows) = if plan.causal {
        let rows = plan.n.div_ceil(SHORT_CL).div_ceil(BLOCK) * BLOCK;
        (
            "short_causal",
            short_causal_smem(d),
            TC_CAUSAL_THREADS,
            rows,
        )
    } else {
        let rows = plan.s.div_ceil(SHORT_CL).div_ceil(TC_ROWS) * TC_ROWS;
        ("short", short_smem(d), reduce_threads(d), rows)
    };
    let name = format!("cosformer_{kernel}_tc{d}_{}", dtype.name());
    let Ok(f) = rt.function(FAMILY, &name) else {
        return Ok(false);
    };
    // (The causal kernel takes 147 KB: a device with less per block takes the separate launches.)
    if !rt.fits_dynamic_smem(&f, smem)? {
        return Ok(false);
    }
    p.chunks = SHORT_CL as i32;
    p.rows_per_chunk = rows as i32;
    let grid = (
        ((plan.b * plan.h).min(MAX_CLUSTERS) * SHORT_CL) as u32,
        1,
        1,
    );
    // SAFETY: the one-launch kernels keep partials and state in the cluster's shared memory (the
    // causal one writes only the caller's `state`, when set); one cluster per (b,h) at a time
    // covers every chunk, state element and query tile.
    unsafe { try_launch_smem(stream, &f, grid, threads, smem, &p) }
}

/// [`queue`](super::launch::queue) on the tensor-core kernels.
///
/// # Safety
/// As [`queue`](super::launch::queue), and [`tensor_cores`] holds.
pub(super) unsafe fn queue_tc(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    mut p: KernelParams,
    workspace: u64,
) -> Result<()> {
    let (bh, d, dt) = (plan.b * plan.h, plan.d, dtype.name());
    let per = state_len(d, d);
    p.partial = workspace;
    if !plan.causal {
        p.state = workspace + (bh * plan.chunks * per * 4) as u64;
    }
    // SAFETY: forwarded contract (the partials and state set just above).
    if unsafe { queue_one_launch(rt, stream, plan, dtype, p)? } {
        return Ok(());
    }
    let bh_y = bh.min(MAX_GRID_YZ) as u32;
    let elem_blocks = grid_dim(per.div_ceil(THREADS as usize));
    let reduce = rt.function(FAMILY, &format!("cosformer_reduce_tc{d}_{dt}"))?;
    let rsmem = reduce_smem(d);
    rt.check_dynamic_smem(&reduce, rsmem)?;
    if plan.causal {
        let rows = tc_causal_rows(plan);
        p.rows_per_chunk = rows as i32;
        p.chunks = plan.n.div_ceil(rows) as i32;
        // SAFETY: forwarded contract, with the causal chunking set just above.
        if unsafe { queue_chained(rt, stream, plan, dtype, &p)? } {
            return Ok(());
        }
        let scan = rt.function(FAMILY, "cosformer_scan_f32")?;
        let causal = rt.function(FAMILY, &format!("cosformer_causal_tc{d}_{dt}"))?;
        let csmem = causal_smem(d);
        rt.check_dynamic_smem(&causal, csmem)?;
        let chunks = p.chunks as u32;
        // The causal pass: one CTA per chunk and share of the value columns (cos_causal_block).
        let shares = causal_shares(d) as u32;
        // SAFETY: chunks ≤ plan.chunks, so the partials fit the workspace; grids cover every
        // chunk, value column and state element.
        unsafe {
            let rgrid = (grid_dim(bh), chunks, 1);
            launch_smem(stream, &reduce, rgrid, reduce_threads(d), rsmem, &p)?;
            launch(stream, &scan, (elem_blocks, bh_y, 1), THREADS, &p)?;
            let cgrid = (chunks * shares, bh_y, 1);
            launch_smem(stream, &causal, cgrid, TC_CAUSAL_THREADS, csmem, &p)?;
        }
    } else {
        let finalize = rt.function(FAMILY, "cosformer_finalize_f32")?;
        let map = rt.function(FAMILY, &format!("cosformer_map_tc{d}_{dt}"))?;
        let msmem = map_smem(d);
        rt.check_dynamic_smem(&map, msmem)?;
        let rows = tc_reduce_rows(plan, rt.resident_ctas(&reduce, reduce_threads(d), rsmem)?);
        p.rows_per_chunk = rows as i32;
        p.chunks = plan.s.div_ceil(rows) as i32;
        // Persistent map CTAs: one wave, shared among the (b,h) slices.
        let slots = rt.resident_ctas(&map, TC_MAP_THREADS, msmem)?;
        let per_bh = ctas_per_slice(slots, bh);
        let map_grid = (plan.n.div_ceil(TC_MAP_ROWS).min(per_bh) as u32, bh_y, 1);
        // SAFETY: as in `queue` (p.chunks ≤ plan.chunks: the partials fit the workspace); the
        // grids cover every chunk, state element and query tile.
        unsafe {
            let rgrid = (grid_dim(bh), p.chunks as u32, 1);
            launch_smem(stream, &reduce, rgrid, reduce_threads(d), rsmem, &p)?;
            launch(stream, &finalize, (elem_blocks, bh_y, 1), THREADS, &p)?;
            launch_smem(stream, &map, map_grid, TC_MAP_THREADS, msmem, &p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The values the static_assert in kernels/cosformer_tc.cuh pins.
    #[test]
    fn geometry_matches_the_kernel_header() {
        assert_eq!((reduce_smem(64), reduce_smem(80)), (36864, 22528));
        assert_eq!(map_smem(64), 37888);
        assert_eq!((causal_smem(64), causal_smem(128)), (83968, 136192));
        assert_eq!((chain_smem(64), short_per(64)), (83968, 1040));
        assert_eq!(short_causal_smem(64), 150528);
        assert_eq!(
            (short_smem(32), short_smem(48), short_smem(64)),
            (28928, 47488, 70144)
        );
        assert_eq!(
            (reduce_threads(32), reduce_threads(64), reduce_threads(128)),
            (64, 256, 512)
        );
        assert_eq!((reduce_threads(80), reduce_threads(96)), (320, 384));
        assert_eq!((map_smem(80), map_smem(96)), (51968, 68096));
    }

    // The benchmark shape on an H100 (reduce: 2 CTAs of 256 threads per SM, 132 SMs): 16 key
    // chunks of 4096 rows per slice in one wave, not the plan's 64; never more than the plan's.
    #[test]
    fn reduce_chunks_fill_one_wave() {
        use crate::tensor::{Dims, Layout};
        let plan_of = |b, h, s| {
            let q = Layout::contiguous(Dims::new(b, h, s, 64));
            let params = super::super::CosformerParams::default();
            Plan::new(&q, &q, &q, &q, &params).unwrap()
        };
        let p = plan_of(1, 16, 65536);
        assert_eq!((p.chunks, p.rows_per_chunk), (64, 1024));
        assert_eq!(tc_reduce_rows(&p, 264), 4096);
        for (b, h, s, slots) in [
            (1, 16, 65536, 1),
            (4, 64, 5000, 264),
            (1, 1, 70000, 100000),
            (1, 3, 9999, 7),
        ] {
            let p = plan_of(b, h, s);
            let rows = tc_reduce_rows(&p, slots);
            assert_eq!(rows % p.rows_per_chunk, 0);
            let chunks = s.div_ceil(rows);
            assert!(chunks <= p.chunks && chunks * rows >= s);
            assert!(chunks == p.chunks || chunks * b * h <= slots.max(b * h));
        }
    }
}
