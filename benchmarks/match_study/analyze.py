import sys, pickle, numpy as np
from collections import defaultdict
P = pickle.load(open(sys.argv[1], "rb"))
tracks, rows, bits = P["tracks"], P["rows"], P["bits"]
POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
def ham(a, b):  # [Q,8],[S,8] -> [Q,S]
    return POP[a[:, None, :] ^ b[None, :, :]].sum(-1)
def hw(d): return np.clip(1 - 2 * d / bits, 0, 1) ** 2
RATES = np.linspace(0.95, 1.05, 11)
QHOP = 16 * 256 / 16000
def profile(q, c, rates=RATES, step=0.128):
    qc, qt = q["codes"], q["times"]
    tc, tt = tracks[c]["codes"], tracks[c]["times"]
    W = hw(ham(qc, tc))  # [Q,S]
    D = ham(qc, tc)
    L = qt[-1] + 3.0
    best = (-1, None)
    allprof = {}
    for r in rates:
        offs = np.arange(-0.0, tt[-1] + 3 - r * L + 1e-9, step) if tt[-1] + 3 >= r * L else np.array([0.0])
        # segments j inside [o, o + r*(L-3)] : query window index i = round((t_j - o)/r/QHOP)
        rel = (tt[None, :] - offs[:, None]) / r  # [O,S] clip time of the segment
        i = np.rint(rel / QHOP).astype(int)
        ok = (rel >= -QHOP / 2) & (i >= 0) & (i < len(qt)) & (np.abs(qt[np.clip(i, 0, len(qt)-1)] - rel) <= QHOP)
        vals = np.where(ok, W[np.clip(i, 0, len(qt)-1), np.arange(len(tt))[None, :]], 0.0)
        n = ok.sum(1)
        prof = np.where(n > 0, vals.sum(1) / np.maximum(n, 1), 0.0)
        allprof[r] = (offs, prof)
        k = int(np.argmax(prof))
        if prof[k] > best[0]:
            best = (prof[k], (r, offs[k], n[k]))
    p1 = allprof[1.0][1] if 1.0 in allprof else allprof[RATES[5]][1]
    bg = float(np.median(p1))
    return best[0], bg, best[1], float(W.mean())
out = []
for q in rows:
    cands = [v[0] for v in q["votes"]]
    feats = []
    for rank, c in enumerate(cands):
        peak, bg, (r, o, n), meanw = profile(q, c)
        feats.append(dict(c=c, vscore=q["votes"][rank][1], peak=peak, bg=bg, r=r, o=o, n=n, meanw=meanw))
    truth = next((c for c in tracks if tracks[c]["name"] == q["name"]), None) if q["inside"] else None
    out.append(dict(q=q, feats=feats, truth=truth))
pickle.dump(out, open(sys.argv[2], "wb"))
