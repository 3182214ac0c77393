// Launch parameters of the cosFormer kernels (SPEC §2). Mirrored by `ops::cosformer::KernelParams`
// in Rust; both sides assert the size and offsets below, so a change here must be made there too.
#pragma once
#include "common.cuh"

// One (b,h) state is COS_STATE_LEN(d, dv) fp32 values, in this order:
//   KVs [d][dv] = Σ (k_j sinθ_j) v_jᵀ,  KVc [d][dv] = Σ (k_j cosθ_j) v_jᵀ,  zs [d],  zc [d].
struct CosformerParams {
  u64 q, k, v, o;        // device pointers, element type given by the kernel's suffix
  u64 partial;           // fp32 [bh][chunk][state]: per-chunk sums (exclusive prefix after scan)
  u64 state;             // fp32 [bh][state]: total (non-causal), running decode state, or 0
  i64 q_sb, q_sh, q_sn;  // element strides (batch, head, seq); the last dim has stride 1
  i64 k_sb, k_sh, k_sn;
  i64 v_sb, v_sh, v_sn;
  i64 o_sb, o_sh, o_sn;
  int b, h, n, s, d, dv;  // n query rows, s key rows (n == s when causal)
  int chunks;             // row chunks of K/V
  int rows_per_chunk;     // causal: a multiple of COS_BLOCK
  int m;                  // angle denominator M: θ_i = (π/2)·i/M
  int pos0;               // tokens before row 0: row r sits at 1-based position pos0 + r + 1
  int relu;               // 1: features are ReLU(x); 0: x as given
  int state_in;           // scan: start from `state` instead of zero
  float eps;              // denominator clamp
  int exact_state;        // tensor-core reduce: state sums as hi + lo parts (a causal prefill,
                          // whose state is returned); 0: hi parts (they only feed the 16-bit
                          // state operand of the map or causal pass)
};

#define COSFORMER_PARAMS_SIZE 200
#define COS_THREADS 256
#define COS_TILE 64   // c and e extent of one state tile
#define COS_ROWS 32   // key rows per shared-memory stage of the reduce pass
#define COS_BLOCK 64  // query rows per CTA of the map/causal passes; key rows per causal sub-block
#define COS_KC 32     // head-dim columns staged at a time by the map/causal passes
