// Launch parameters of the AFT kernels (SPEC §3). Mirrored by `ops::aft::KernelParams` in Rust;
// both sides assert the size and offsets below, so a change here must be made there too.
#pragma once
#include "common.cuh"

// AftParams::variant
#define AFT_SIMPLE 0
#define AFT_LOCAL 1
#define AFT_CONV 2
#define AFT_FULL 3

// Chunk statistics are three fp32 planes of d values each, per (bh, chunk):
//   m = max K over the chunk's rows, a = Σ exp(K − m)·V, z = Σ exp(K − m)   (empty: −inf, 0, 0).
struct AftParams {
  u64 q, k, v, o;       // device pointers, element type given by the kernel's suffix
  u64 w;                // fp32 bias: full [t][t], local [t][2s−1], conv [h][2s−1]; 0 for simple
  u64 part;             // fp32 [bh][chunks][3][d]: statistics of each chunk
  u64 pre;              // fp32 [bh][chunks+1][3][d]: statistics of chunks [0, i)
  u64 suf;              // fp32 [bh][chunks+1][3][d]: statistics of chunks [i, chunks) (or 0)
  u64 rmax;             // fp32 [t]: max of each row of w (full; causal: over t' ≤ t) (or 0)
  u64 vmax;             // fp32 [bh][chunks+1][d]: max |V| of chunk i, at [chunks] of all (or 0)
  u64 bmat;             // 16-bit [t][bcols]: [E⊙V | E] per 64-channel tile, aft_full_tc (or 0)
  i64 q_sb, q_sh, q_sn;  // element strides (batch, head, seq); the last dim has stride 1
  i64 k_sb, k_sh, k_sn;
  i64 v_sb, v_sh, v_sn;
  i64 o_sb, o_sh, o_sn;
  int b, h, t, d;
  int variant;  // AFT_SIMPLE … AFT_FULL
  int window;   // s (local, conv)
  int causal;
  int chunks;   // ceil(t / AFT_CHUNK)
  int bcols;    // full: columns of bmat (AFT_FG_TILE per channel tile, an even number of
                // tiles); band kernels: band keys per tile (a multiple of AFT_KB)
  int group;    // band kernels: slices per CTA (conv: 1)
  int strip;    // chunk pass order (aft_chunk_block): tiles per strip a window-pass CTA walks in
                // order (chunks when the window pass goes tile by tile); 0: grid order
  int parts;    // aft_simple_reduce / _map: partial statistics per slice (≤ AFT_PARTS_MAX)
  u64 flags;    // aft_simple_causal: u32 [slices][chunks of AFT_SC_ROWS] look-back flags, then a
                // ticket counter, zeroed before the launch (or 0)
};

#define AFT_PARAMS_SIZE 240
#define AFT_THREADS 256
#define AFT_CHUNK 64  // rows per chunk; also the query rows of one window-kernel tile
#define AFT_CT 64     // channels per tile
#define AFT_KB 32     // key rows staged per step of the window kernel
#define AFT_PARTS_MAX 128  // AftParams::parts: the workspace holds this many per slice, whatever T
#define AFT_SEGS 8    // warps (sequence segments) of the scan kernel
#define AFT_FG_TILE 128  // bmat columns of one 64-channel tile: E⊙V of the 64, then E
