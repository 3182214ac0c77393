"""The exp(w) exchange protocol of aft_full_tc_cl (kernels/aft_full_tc.cuh), under random schedules.

Each of the cluster's CTAs exps its own rows of every 32-key block and stores them into A stage
(block % AST) of every CTA. A CTA reads A(i) twice in block i (its two k-steps). The schedule:
    prologue: store A(0); arrive; wait; [store A(1)]; arrive
    block i:  read A(i); wait; [store A(i + 2)]; arrive; read A(i)
    end:      wait
A remote store lands at any moment between its issue and the storer's next arrive (the release).
Every read must see block i's rows from every CTA. The scheduler picks a random runnable CTA each
step and lands random pending stores, so a CTA may run a whole barrier phase ahead of the others.

    python3 full_exchange.py            # AST = 4 (the kernel) passes; AST = 3 must fail
"""
import random
import sys

CL = 4


def run(ast, nkb, seed):
    rng = random.Random(seed)
    stage = [[[None] * CL for _ in range(ast)] for _ in range(CL)]  # stage[cta][s][owner] = block
    pending = []  # (writer, dst cta, stage, owner, block)
    arrived = [0] * CL  # arrivals so far per CTA
    waited = [0] * CL  # waits completed per CTA

    def program(c):
        def store(j):
            for d in range(CL):
                pending.append((c, d, j % ast, c, j))

        def read(i, what):
            got = stage[c][i % ast]
            if got != [i] * CL:
                raise AssertionError(f"CTA {c} read {what} of block {i}: stage holds {got}")

        store(0)
        yield "arrive"
        yield "wait"
        if nkb > 1:
            store(1)
        yield "arrive"
        for i in range(nkb):
            read(i, "k-step 1")
            yield "wait"
            if i + 2 < nkb:
                store(i + 2)
            yield "arrive"
            yield "step"  # the other CTAs may run here
            read(i, "k-step 2")
        yield "wait"

    progs = [program(c) for c in range(CL)]
    nxt = [next(p) for p in progs]
    done = [False] * CL

    def land(k):
        w, d, s, o, j = pending.pop(k)
        stage[d][s][o] = j

    while not all(done):
        # land some pending stores at random
        while pending and rng.random() < 0.5:
            land(rng.randrange(len(pending)))
        runnable = [c for c in range(CL) if not done[c] and
                    (nxt[c] != "wait" or min(arrived) > waited[c])]
        c = rng.choice(runnable)
        op = nxt[c]
        if op == "arrive":
            # release: the CTA's own earlier stores land first
            for k in reversed(range(len(pending))):
                if pending[k][0] == c:
                    land(k)
            arrived[c] += 1
        elif op == "wait":
            waited[c] += 1
        try:
            nxt[c] = next(progs[c])
        except StopIteration:
            done[c] = True
    assert arrived == waited == [arrived[0]] * CL


def main():
    failures = {}
    for ast in (4, 3):
        bad = 0
        for seed in range(2000):
            try:
                run(ast, nkb=1 + seed % 9, seed=seed)
            except AssertionError as e:
                bad += 1
                if bad == 1:
                    print(f"AST = {ast}: {e}")
        failures[ast] = bad
        print(f"AST = {ast}: {bad} of 2000 schedules failed")
    ok = failures[4] == 0 and failures[3] > 0
    print("protocol holds with 4 A stages and is caught with 3" if ok else "UNEXPECTED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
