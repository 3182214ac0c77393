"""Model checker of the all-gather protocol of newton_pinv_cl_async_f32 (kernels/newton.cu) under
random schedules: the 8 CTAs of a cluster advance in random order, and every st.async (one per
row and receiving CTA) lands at a random later time, so orders the simulator's one schedule never
shows are tried. Each CTA is one sequential process (its CTA barriers order its threads);
intra-CTA details and values are the simulator's business (tests/gpu_soft.rs).

Per matrix: arm bars[1] (T ≥ 2) and bars[0] (T ≥ 3); cluster barrier; then per step k: first
product over the CTA's own rows of buffer k % 2; wait bars[k % 2] (k > 0) and arm its next fill
(k + 2 < T); second product over every row of buffer k % 2 (its reads span an interval: other
events may land during it); own new rows stored locally into buffer (k + 1) % 2; CTA barrier;
st.async of the own rows into every other active CTA's buffer (k + 1) % 2 (k + 1 < T).
Checks: every read of a row sees exactly the version it needs, at the start and at the end of
the read (so an overwrite during a read, write after read, is caught as well as a stale read);
no st.async finds its phase unarmed (tx-count below zero); no deadlock; after the kernel no
bytes outstanding.
    python3 newton_async.py [schedules per m, default 300]
"""
import random
import sys

CL = 8


def run(m, iters, mats, rng):
    rb = -(-m // CL)
    active = -(-m // rb)
    own = [range(r * rb, min(m, r * rb + rb)) for r in range(CL)]
    owner = {row: r for r in range(active) for row in own[r]}
    # ver[r][b][row]: (matrix, step) of the Z held by CTA r's buffer b at that row
    ver = [[[None] * m for _ in range(2)] for _ in range(CL)]
    bars = [[dict(phase=0, pending=1, tx=0) for _ in range(2)] for _ in range(CL)]
    parity = [0] * CL
    fill = [(m - len(own[r])) * m * 4 for r in range(CL)]
    flight = []  # (receiver, buffer, row, version)

    def complete(r, b):
        bar = bars[r][b]
        if bar["pending"] == 0 and bar["tx"] == 0:
            bar["phase"] += 1
            bar["pending"] = 1

    def arm(r, b):
        bar = bars[r][b]
        assert bar["pending"] == 1, "armed twice in one phase"
        bar["pending"] -= 1
        bar["tx"] += fill[r]
        complete(r, b)

    def check(r, b, rows, want, what):
        for row in rows:
            got = ver[r][b][row]
            assert got == want, f"CTA {r} {what}: row {row} of buffer {b} holds {got}, needs {want}"

    def program(r):
        """CTA r's actions; yields 'barrier' at cluster barriers, ('wait', b) before a wait."""
        for mat in range(mats):
            if r < active:
                if iters >= 2:
                    arm(r, 1)
                if iters >= 3:
                    arm(r, 0)
            yield "barrier"
            if r >= active:
                continue
            for row in range(m):  # newton_start: Z₀ whole, computed locally
                ver[r][0][row] = (mat, 0)
            for k in range(iters):
                cur, nxt = k % 2, (k + 1) % 2
                check(r, cur, own[r], (mat, k), f"first product of step {k}")
                yield "step"
                if k > 0:
                    yield ("wait", cur)
                    parity[r] ^= 1 << cur
                    if k + 2 < iters:
                        arm(r, cur)
                check(r, cur, range(m), (mat, k), f"second product of step {k} (start)")
                yield "step"  # the reads take time: landings may interleave
                check(r, cur, range(m), (mat, k), f"second product of step {k} (end)")
                for row in own[r]:
                    ver[r][nxt][row] = (mat, k + 1)
                yield "step"
                if k + 1 < iters:
                    for row in own[r]:
                        for c in range(active):
                            if c != r:
                                flight.append((c, nxt, row, (mat, k + 1)))
                    yield "step"
            check(r, iters % 2, own[r], (mat, iters), "output")
        yield "done"

    procs = [program(r) for r in range(CL)]
    state = [next(p) for p in procs]
    while True:
        if all(s == "done" for s in state) and not flight:
            break
        if all(s in ("barrier", "done") for s in state) and "barrier" in state:
            assert all(s == "barrier" for s in state), "a CTA left while others wait at a barrier"
            state = [next(p) for p in procs]
            continue
        ready = [r for r, s in enumerate(state) if s == "step"]
        for r, s in enumerate(state):
            if isinstance(s, tuple):
                b = s[1]
                if bars[r][b]["phase"] & 1 != (parity[r] >> b) & 1:  # that phase completed
                    ready.append(r)
        choices = ready + (["land"] * min(len(flight), 4) if flight else [])
        assert choices, f"deadlock: {state}, {len(flight)} in flight"
        pick = rng.choice(choices)
        if pick == "land":
            c, b, row, v = flight.pop(rng.randrange(len(flight)))
            ver[c][b][row] = v
            bar = bars[c][b]
            bar["tx"] -= m * 4
            assert bar["tx"] >= 0, f"CTA {c} buffer {b}: st.async bytes before their expect_tx"
            complete(c, b)
        else:
            state[pick] = next(procs[pick])
    for r in range(CL):
        for b in range(2):
            assert bars[r][b]["tx"] == 0 and bars[r][b]["pending"] == 1, f"CTA {r}: bytes outstanding"


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rng = random.Random(19)
    for m in (17, 20, 33, 49, 57, 63, 64):
        for iters in (0, 1, 2, 3, 4, 7):
            for _ in range(n // 6):
                run(m, iters, 2, rng)
        print(f"PASS m={m}: {n // 6 * 6} random schedules, T ∈ {{0, 1, 2, 3, 4, 7}}, 2 matrices")
    print("ALL PASS")


if __name__ == "__main__":
    main()
