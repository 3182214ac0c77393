"""Final decode state after a tensor-core prefill vs the f64 reference state (the GPU test
cosformer_prefill_then_decode_equals_causal requires rel. Frobenius <= 1e-5).
The reduce and the causal state update use hi = f16(k·sinθ) plus lo = f16(k·sinθ − hi) operands."""
import numpy as np, sys
import emu, run
from emu import F32

def ref_state(kd, vd, M):
    st = []
    for bh in range(kd.shape[0]):
        n = kd.shape[1]
        th = np.pi / 2 * np.arange(1, n + 1) / M
        kf = np.maximum(kd[bh], 0)
        ks, kc = kf * np.sin(th)[:, None], kf * np.cos(th)[:, None]
        st.append(np.concatenate([(ks.T @ vd[bh]).ravel(), (kc.T @ vd[bh]).ravel(), ks.sum(0), kc.sum(0)]))
    return np.concatenate(st)

def go(N, D, rpc=None, label=""):
    B, H = 1, 2
    M = N + 3 + 5
    q, k, v = run.make_inputs(11, B, H, N, N, D, True)
    kd, vd = (x.astype(np.float64).reshape(B * H, N, D) for x in (k, v))
    st0 = np.zeros(B * H * (2 * D * D + 2 * D))
    out, races, p, nw = run.run_pipeline(q, k, v, True, True, D, rpc, M=M, state_in=st0)
    err = run.rel_frob(p["state"].a.astype(np.float64), ref_state(kd, vd, M))
    print(f"{label} prefill N={N} D={D}: final-state rel_frob = {err:.2e} (test bound 1e-5) -> {'PASS' if err <= 1e-5 else 'FAIL'}", flush=True)

if __name__ == "__main__":
    go(1000, 64, None, "f16:")
    go(300, 32, None, "f16:")
