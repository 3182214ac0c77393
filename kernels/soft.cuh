// Launch parameters of the SOFT kernels (SPEC §1), shared by soft.cu and newton.cu. Mirrored by
// `ops::soft::KernelParams` in Rust; both sides assert the size and offsets below, so a change
// here must be made there too.
#pragma once
#include "common.cuh"

struct SoftKernelParams {
  u64 q, k, v, o;        // element type given by the kernel's suffix; k == q when tied
  u64 l;                 // fp32 [bh][m][d]: landmarks in the scaled space
  u64 p;                 // fp32 [bh][n][m]: P = exp(-½ D²(Qs, L)) (gaussian_products)
  u64 a;                 // fp32 [bh][m][m]: A = exp(-½ D²(L, L))
  u64 z;                 // fp32 [bh][m][m]: Z (Newton output; Z_k of a multi-launch step)
  u64 partial;           // fp32 [bh][chunk][m][dv]: per-chunk P_kᵀV (attention pass 1)
  u64 s;                 // fp32 [bh][m][dv]: P_kᵀV summed over chunks in order
  u64 w;                 // fp32 [bh][m][dv]: W = Z·(P_kᵀV)
  u64 ahat;              // fp32 [bh][m][m]: Â = A + λI (multi-launch Newton)
  u64 gemm_a, gemm_b;    // fp32 [bh][m][m] operands of one multi-launch Newton GEMM
  u64 gemm_c, gemm_z;    // its output and, in mode 1, the Z of C = 2Z − A·B
  i64 q_sb, q_sh, q_sn;  // element strides (batch, head, seq); the last dim has stride 1
  i64 k_sb, k_sh, k_sn;
  i64 v_sb, v_sh, v_sn;
  i64 o_sb, o_sh, o_sn;
  int b, h, n, d, dv, m;
  int pool;              // landmarks: 0 AvgPool1d, 1 AvgPool2d
  int height, width, r;  // AvgPool2d grid and window
  int chunks;            // row chunks of attention pass 1 (tensor cores: CTAs per slice, each
                         // taking tiles chunk, chunk + chunks, … of the seam order, soft_tc.cuh)
  int rows_per_chunk;    // a multiple of SOFT_ROWS (CUDA-core pass 1)
  int iters;             // Newton steps T
  int gemm_mode;         // 0: C = A·B; 1: C = 2Z − A·B
  float scale;           // D^(-1/4)
  float alpha_scale;     // c of α = c·2/(max row sum)²
  float ridge;           // λ
  int strip;             // tensor-core passes: 64-row tiles per pooling segment (≥ 1), their seam order
};

#define SOFT_PARAMS_SIZE 296
#define SOFT_THREADS 256
#define SOFT_POOL_THREADS 128  // the landmark pooling kernel's
#define SOFT_ROWS 64     // sequence rows per P tile (attention passes, products)
#define SOFT_LM 64       // landmarks per P tile
#define SOFT_KC 32       // head-dim columns staged at a time
#define SOFT_ET 64       // value columns per CTA (attention passes)
#define SOFT_MAX_M 256   // largest landmark count
#define SOFT_MAX_D 256   // largest head dim
#define NEWTON_THREADS 256
#define NEWTON_SMEM_MAX_M 128  // largest m of the one-launch (shared-memory) Newton kernel
#define NEWTON_TILE 64         // output tile of a multi-launch Newton GEMM
#define NEWTON_KT 32           // k extent staged at a time by it
