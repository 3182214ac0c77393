// Launch parameters of the elementwise / reduction kernels of the cuBLAS-composed baselines
// (SPEC §5). Mirrored by `baseline::BaselineParams` in Rust; both sides assert the size and the
// offsets below, so a change here must be made there too. Each kernel reads only the fields its
// comment names; every matrix is contiguous, `[bh][rows][cols]` unless the kernel says otherwise.
#pragma once
#include "common.cuh"

struct BaselineParams {
  u64 src, src2;      // inputs (element type given by the kernel's suffix unless said fp32)
  u64 dst, dst2;      // outputs
  u64 aux, aux2;      // fp32 per-row / per-column vectors (norms, column maxima, z)
  i64 count;          // elements of an elementwise kernel
  int bh;             // (b,h) slices
  int rows, cols;     // extents of one slice's matrix
  int inner;          // contracted / feature width (cosFormer 2D, SOFT D)
  int chunks;         // row chunks of a column reduction
  int rows_per_chunk;
  int causal;         // 1: key j > query i is masked
  int relu;           // cosFormer: 1 applies ReLU to the features
  int angle_m;        // cosFormer M (θ_i = (π/2)·i/M, 1-based i)
  int window;         // AFT-local s
  int grid_h, grid_w, grid_r;  // SOFT AvgPool2d grid and window
  int out_rows;       // SOFT landmarks m
  float scale;        // elementwise scale / fill value
  float eps;          // clamp of a denominator or norm
  float ridge;        // SOFT λ
  float alpha_scale;  // SOFT c in α = c·2/(max row sum)²
};

#define BASELINE_PARAMS_SIZE 128
#define BASELINE_THREADS 256
#define BASELINE_WARPS (BASELINE_THREADS / 32)
#define BASELINE_COL_TILE 32  // columns per CTA of a column reduction (one per lane)
#define BASELINE_NEG_INF __int_as_float(0xff800000)

// Column reductions: what is accumulated over the rows.
#define BASELINE_OP_L1 0   // Σ|x|, finished as 1/max(Σ|x|, eps)
#define BASELINE_OP_SUM 1  // Σx
#define BASELINE_OP_MAX 2  // max x
