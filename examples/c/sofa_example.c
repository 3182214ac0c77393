/*
 * An "engine" embedding sofa through its C ABI: memory from cudaMalloc, its own non-blocking
 * stream, tensors in engine layout [B, N, H, D], one workspace shared by two ops queued on that
 * stream (SimA and causal cosFormer), results checked against values computed here on the host.
 * Prints "ok" on success; "SKIP ..." (exit 0) without a CUDA device.
 *
 * Build: scripts/build-c-example.sh (gcc against include/sofa.h and libsofa, `--features capi`).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "sofa.h"

enum { B = 2, N = 37, H = 3, D = 16 };
#define LEN ((size_t)B * N * H * D)

#define CUDA_CHECK(call)                                                                      \
  do {                                                                                        \
    cudaError_t err_ = (call);                                                                \
    if (err_ != cudaSuccess) {                                                                \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      exit(1);                                                                                \
    }                                                                                         \
  } while (0)

#define SOFA_CHECK(call)                                                                   \
  do {                                                                                     \
    sofa_status st_ = (call);                                                              \
    if (st_ != SOFA_STATUS_OK) {                                                           \
      fprintf(stderr, "%s:%d: %s: %s: %s\n", __FILE__, __LINE__, #call,                   \
              sofa_status_name((int32_t)st_), sofa_last_error());                          \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

/* Element (b, h, n, c) of a contiguous [B, N, H, D] buffer. */
static size_t at(int b, int h, int n, int c) { return (((size_t)b * N + n) * H + h) * D + c; }

static float lcg(unsigned *s) {
  *s = *s * 1664525u + 1013904223u;
  return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f; /* [-1, 1) */
}

/* SimA (SPEC §4): o = q̂ k̂ᵀ v, q̂ and k̂ column-ℓ1-normalized per (b, h). */
static void sima_host(const float *q, const float *k, const float *v, double *o) {
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      double qn[D], kn[D];
      for (int c = 0; c < D; c++) {
        qn[c] = kn[c] = 0.0;
        for (int n = 0; n < N; n++) {
          qn[c] += fabs(q[at(b, h, n, c)]);
          kn[c] += fabs(k[at(b, h, n, c)]);
        }
        qn[c] = qn[c] > 1e-12 ? qn[c] : 1e-12;
        kn[c] = kn[c] > 1e-12 ? kn[c] : 1e-12;
      }
      for (int i = 0; i < N; i++)
        for (int e = 0; e < D; e++) {
          double acc = 0.0;
          for (int j = 0; j < N; j++) {
            double a = 0.0;
            for (int c = 0; c < D; c++)
              a += q[at(b, h, i, c)] / qn[c] * (k[at(b, h, j, c)] / kn[c]);
            acc += a * v[at(b, h, j, e)];
          }
          o[at(b, h, i, e)] = acc;
        }
    }
}

/* Causal cosFormer (SPEC §2), M = N, 1-based positions, eps = 1e-6, quadratic form. */
static void cosformer_causal_host(const float *q, const float *k, const float *v, double *o) {
  const double half_pi = 1.57079632679489661923;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < N; i++) {
        double num[D] = {0}, den = 0.0;
        for (int j = 0; j <= i; j++) {
          double dot = 0.0;
          for (int c = 0; c < D; c++) {
            double qc = q[at(b, h, i, c)], kc = k[at(b, h, j, c)];
            dot += (qc > 0 ? qc : 0) * (kc > 0 ? kc : 0);
          }
          double w = dot * cos(half_pi * (i + 1) / N - half_pi * (j + 1) / N);
          den += w;
          for (int e = 0; e < D; e++) num[e] += w * v[at(b, h, j, e)];
        }
        den = den > 1e-6 ? den : 1e-6;
        for (int e = 0; e < D; e++) o[at(b, h, i, e)] = num[e] / den;
      }
}

/* Relative Frobenius error of the device result against the host reference. */
static double rel_err(const float *got, const double *want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < LEN; i++) {
    double d = (double)got[i] - want[i];
    if (!isfinite(got[i])) return INFINITY;
    num += d * d;
    den += want[i] * want[i];
  }
  return sqrt(num / (den > 0 ? den : 1.0));
}

int main(void) {
  printf("sofa %s (C ABI %u)\n", sofa_version(), sofa_abi_version());
  if (sofa_abi_version() != SOFA_ABI_VERSION) {
    fprintf(stderr, "header ABI %d, library ABI %u\n", SOFA_ABI_VERSION, sofa_abi_version());
    return 1;
  }
  sofa_runtime *rt = NULL;
  sofa_status st = sofa_runtime_create(0, &rt);
  if (st == SOFA_STATUS_NO_DEVICE) {
    printf("SKIP: %s\n", sofa_last_error());
    return 0;
  }
  SOFA_CHECK(st);

  /* The engine's own resources. */
  CUDA_CHECK(cudaSetDevice(0));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  float *hq = malloc(LEN * sizeof(float)), *hk = malloc(LEN * sizeof(float));
  float *hv = malloc(LEN * sizeof(float)), *ho = malloc(LEN * sizeof(float));
  double *want = malloc(LEN * sizeof(double));
  if (!hq || !hk || !hv || !ho || !want) return 1;
  unsigned seed = 12345u;
  for (size_t i = 0; i < LEN; i++) {
    hq[i] = lcg(&seed);
    hk[i] = lcg(&seed);
    hv[i] = lcg(&seed);
  }
  float *q, *k, *v, *o_sima, *o_cos;
  CUDA_CHECK(cudaMalloc((void **)&q, LEN * sizeof(float)));
  CUDA_CHECK(cudaMalloc((void **)&k, LEN * sizeof(float)));
  CUDA_CHECK(cudaMalloc((void **)&v, LEN * sizeof(float)));
  CUDA_CHECK(cudaMalloc((void **)&o_sima, LEN * sizeof(float)));
  CUDA_CHECK(cudaMalloc((void **)&o_cos, LEN * sizeof(float)));
  CUDA_CHECK(cudaMemcpyAsync(q, hq, LEN * sizeof(float), cudaMemcpyHostToDevice, stream));
  CUDA_CHECK(cudaMemcpyAsync(k, hk, LEN * sizeof(float), cudaMemcpyHostToDevice, stream));
  CUDA_CHECK(cudaMemcpyAsync(v, hv, LEN * sizeof(float), cudaMemcpyHostToDevice, stream));

  /* One workspace, large enough for both ops (they run one after the other on `stream`). */
  sofa_cosformer_params cp = sofa_cosformer_params_default();
  cp.causal = 1;
  size_t ws_sima = 0, ws_cos = 0;
  SOFA_CHECK(sofa_sima_workspace_bytes(B, H, N, D, D, &ws_sima));
  SOFA_CHECK(sofa_cosformer_workspace_bytes(B, H, N, N, D, D, &cp, &ws_cos));
  size_t ws_bytes = ws_sima > ws_cos ? ws_sima : ws_cos;
  void *ws = NULL;
  CUDA_CHECK(cudaMalloc(&ws, ws_bytes));

  /* Engine layout [B, N, H, D]: described by strides, no copy. */
  sofa_tensor tq = sofa_tensor_bnhd(q, B, N, H, D);
  sofa_tensor tk = sofa_tensor_bnhd(k, B, N, H, D);
  sofa_tensor tv = sofa_tensor_bnhd(v, B, N, H, D);
  sofa_tensor to_sima = sofa_tensor_bnhd(o_sima, B, N, H, D);
  sofa_tensor to_cos = sofa_tensor_bnhd(o_cos, B, N, H, D);
  SOFA_CHECK(sofa_sima_forward(rt, stream, SOFA_DTYPE_F32, &tq, &tk, &tv, &to_sima, ws, ws_bytes));
  SOFA_CHECK(sofa_cosformer_forward(rt, stream, &cp, SOFA_DTYPE_F32, &tq, &tk, &tv, &to_cos, ws,
                                    ws_bytes));

  /* A refused call: typed status and a message, nothing queued. */
  st = sofa_sima_forward(rt, stream, SOFA_DTYPE_F32, &tq, &tk, &tv, &to_sima, ws, 4);
  if (st != SOFA_STATUS_BUFFER_TOO_SMALL) {
    fprintf(stderr, "expected SOFA_STATUS_BUFFER_TOO_SMALL, got %s\n", sofa_status_name(st));
    return 1;
  }
  printf("refused as expected: %s\n", sofa_last_error());

  int fail = 0;
  const double tol = 1e-4; /* f32 storage, fp32 accumulation vs f64 here */
  CUDA_CHECK(cudaMemcpyAsync(ho, o_sima, LEN * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  sima_host(hq, hk, hv, want);
  double e = rel_err(ho, want);
  printf("sima      [B,N,H,D]=[%d,%d,%d,%d] f32: rel err %.3g\n", B, N, H, D, e);
  fail |= !(e <= tol);

  CUDA_CHECK(cudaMemcpyAsync(ho, o_cos, LEN * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  cosformer_causal_host(hq, hk, hv, want);
  e = rel_err(ho, want);
  printf("cosformer causal                   f32: rel err %.3g\n", e);
  fail |= !(e <= tol);

  cudaFree(ws);
  cudaFree(q);
  cudaFree(k);
  cudaFree(v);
  cudaFree(o_sima);
  cudaFree(o_cos);
  CUDA_CHECK(cudaStreamDestroy(stream));
  SOFA_CHECK(sofa_runtime_destroy(rt));
  free(hq);
  free(hk);
  free(hv);
  free(ho);
  free(want);
  if (fail) {
    printf("FAILED\n");
    return 1;
  }
  printf("ok\n");
  return 0;
}
