// Minimal forms of the synchronization patterns compute-sanitizer racecheck reported on in
// sofa's kernels on the H100 (bench/NOTES.md, "The first H100 run of every operator"), each
// correct by the PTX memory model. Whether racecheck reports the minimal form too decides
// between a tool artefact and a bug in the kernel:
//   mbar   thread 0 inits an mbarrier, fences the init, arms it (arrive.expect_tx); the other
//          CTA of a cluster of 2 fills it with st.async; every thread waits on it, then reads
//          (newton_pinv_cl_async_f32's setup and all-gather).
//   split  a cluster of 4 CTAs rings three shared stages: in block i each CTA stores its rows
//          of stage (i + 1) % 3 into every CTA (st.shared::cluster), arrives on the cluster
//          barrier (release), reads stage i % 3 with ldmatrix, waits (acquire)
//          (aft_full_tc_cl's A stages).
// Each mode checks its own result and prints "MODE ok"; exit status 1 on a wrong value.
// Build (sm_90): nvcc -arch=sm_90a -std=c++17 -I kernels -o sanitizer_repro scripts/sanitizer_repro.cu
// Run: compute-sanitizer --tool racecheck ./sanitizer_repro mbar   (and split)
#include <cstdio>
#include <cstring>
#include <cuda_runtime.h>
#include "mma.cuh"

#define CHECK(x)                                                                   \
  do {                                                                             \
    cudaError_t e_ = (x);                                                          \
    if (e_ != cudaSuccess) {                                                       \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      return 2;                                                                    \
    }                                                                              \
  } while (0)

constexpr int MBAR_THREADS = 64;

// Cluster of 2: CTA r receives MBAR_THREADS words from CTA 1 − r (1000·(sender + 1) + thread), then
// writes them out.
__global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(MBAR_THREADS) mbar_kernel(u32* out) {
  __shared__ __align__(8) u64 bar;
  __shared__ u32 buf[MBAR_THREADS];
  const int rank = cluster_rank();
  const u32 b = smem_addr(&bar);
  if (threadIdx.x == 0) {
    mbar_init(b, 1);
    mbar_init_fence();
    mbar_arrive_expect_tx(b, MBAR_THREADS * 4);
  }
  cluster_sync();  // every CTA's barrier is armed before any st.async reaches it
  const int peer = 1 - rank;
  st_async_u32(cluster_map(smem_addr(&buf[threadIdx.x]), peer), 1000u * (rank + 1) + threadIdx.x,
               cluster_map(b, peer));
  mbar_wait_cluster(b, 0);
  out[rank * MBAR_THREADS + threadIdx.x] = buf[threadIdx.x];
  cluster_sync();  // no CTA exits while its shared memory may still be written
}

constexpr int SPLIT_CL = 4, SPLIT_ROWS = 64, SPLIT_LD = 24, SPLIT_BLOCKS = 12, SPLIT_THREADS = 128;

// Cluster of 4, three stages of 64 rows × 16 halves (padded to SPLIT_LD); CTA r owns rows
// [16r, 16r + 16). Value of (block i, row, col): i·4096 + row·16 + col (exact in u16 for i < 16).
__global__ void __cluster_dims__(SPLIT_CL, 1, 1) __launch_bounds__(SPLIT_THREADS) split_kernel(u32* sums) {
  __shared__ __align__(16) u16 stage[3][SPLIT_ROWS * SPLIT_LD];
  const int rank = cluster_rank();
  // Thread t stores two halves of its CTA's rows: row 16·rank + t / 8, cols 2(t % 8), +1.
  auto share = [&](int i) {
    const int row = 16 * rank + threadIdx.x / 8, col = 2 * (threadIdx.x % 8);
    const u32 v0 = (u32)(i * 4096 + row * 16 + col), v = v0 | ((v0 + 1) << 16);
    const u16* dst = &stage[i % 3][row * SPLIT_LD + col];
#pragma unroll
    for (int c = 0; c < SPLIT_CL; ++c) st_cluster_u32(dst, c, v);
  };
  // Warp w reads rows [16w, 16w + 16) × cols [0, 16) of a stage: two ldmatrix.x4 (the halves of
  // the rows), the first before the arrive, the second after it (as the kernel's two k-steps).
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto read = [&](int s, int half, u32& acc) {
    u32 r[4];
    const int row = 16 * warp + 8 * half + lane % 8, col = 8 * (lane / 8 % 2);
    ldmatrix_x4_at(r, smem_addr(&stage[s][row * SPLIT_LD + col]));
    for (int j = 0; j < 4; ++j) acc += (r[j] & 0xffffu) + (r[j] >> 16);
  };
  share(0);
  cluster_sync();
  u32 acc = 0;
  for (int i = 0; i < SPLIT_BLOCKS; ++i) {
    read(i % 3, 0, acc);
    if (i + 1 < SPLIT_BLOCKS) share(i + 1);
    cluster_arrive();  // this CTA's stores of block i + 1 are done
    read(i % 3, 1, acc);
    __syncthreads();
    cluster_wait();  // every CTA's stores of block i + 1 are visible
  }
  sums[rank * SPLIT_THREADS + threadIdx.x] = acc;
  cluster_sync();
}

static int run_mbar() {
  u32* d;
  CHECK(cudaMalloc(&d, 2 * MBAR_THREADS * 4));
  mbar_kernel<<<2, MBAR_THREADS>>>(d);
  CHECK(cudaGetLastError());
  u32 h[2 * MBAR_THREADS];
  CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  CHECK(cudaFree(d));
  for (int r = 0; r < 2; ++r)
    for (int t = 0; t < MBAR_THREADS; ++t)
      if (h[r * MBAR_THREADS + t] != 1000u * (2 - r) + t) {
        std::printf("mbar wrong: CTA %d thread %d got %u\n", r, t, h[r * MBAR_THREADS + t]);
        return 1;
      }
  std::printf("mbar ok\n");
  return 0;
}

static int run_split() {
  u32* d;
  CHECK(cudaMalloc(&d, SPLIT_CL * SPLIT_THREADS * 4));
  split_kernel<<<SPLIT_CL, SPLIT_THREADS>>>(d);
  CHECK(cudaGetLastError());
  u32 h[SPLIT_CL * SPLIT_THREADS];
  CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  CHECK(cudaFree(d));
  // Expected: the same per-lane sums computed on the host.
  for (int r = 0; r < SPLIT_CL; ++r)
    for (int t = 0; t < SPLIT_THREADS; ++t) {
      const int warp = t / 32, lane = t % 32;
      u32 want = 0;
      for (int i = 0; i < SPLIT_BLOCKS; ++i)
        for (int half = 0; half < 2; ++half)
          for (int j = 0; j < 4; ++j) {
            // ldmatrix.x4: register j holds, for this lane, row (lane / 4) of matrix j whose rows
            // were addressed by lanes 8j..8j+7; columns 2(lane % 4), +1 of that matrix's 8.
            const int src = 8 * j + lane / 4;
            const int row = 16 * warp + 8 * half + src % 8, col = 8 * (src / 8 % 2) + 2 * (lane % 4);
            want += (u32)(i * 4096 + row * 16 + col) + (u32)(i * 4096 + row * 16 + col + 1);
          }
      if (h[r * SPLIT_THREADS + t] != want) {
        std::printf("split wrong: CTA %d thread %d got %u, want %u\n", r, t, h[r * SPLIT_THREADS + t], want);
        return 1;
      }
    }
  std::printf("split ok\n");
  return 0;
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  if (!std::strcmp(mode, "mbar")) return run_mbar();
  if (!std::strcmp(mode, "split")) return run_split();
  std::printf("usage: %s mbar|split\n", argv[0]);
  return 2;
}
