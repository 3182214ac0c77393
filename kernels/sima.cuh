// Launch parameters of the SimA kernels (SPEC §4). Mirrored by `ops::sima::SimaParams` in Rust;
// both sides assert the size and offsets below, so a change here must be made there too.
#pragma once
#include "common.cuh"

struct SimaParams {
  u64 q, k, v, o;        // device pointers, element type given by the kernel's suffix
  u64 partial;           // fp32 [bh][chunk][d*dv + 2*d]: per-chunk k^T v, sum|q|, sum|k|
  u64 g;                 // fp32 [bh][d*dv] (linear order) or [bh][2*d] column norms (quadratic)
  i64 q_sb, q_sh, q_sn;  // element strides (batch, head, seq); the last dim has stride 1
  i64 k_sb, k_sh, k_sn;
  i64 v_sb, v_sh, v_sn;
  i64 o_sb, o_sh, o_sn;
  int b, h, n, d, dv;
  int chunks;            // row chunks of the reduce pass
  int rows_per_chunk;    // a multiple of SIMA_ROW_TILE
  int vec;               // 1: 16-byte loads are legal (d, dv, strides % 8 == 0, 16-byte aligned)
};

#define SIMA_PARAMS_SIZE 176
#define SIMA_THREADS 256
#define SIMA_ROW_TILE 32   // rows per shared-memory stage of the reduce pass
#define SIMA_MAP_ROWS 64   // rows per CTA of the map pass
#define SIMA_EPS 1e-12f
