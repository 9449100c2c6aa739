import sys, pickle, numpy as np
def load(d):
    P = pickle.load(open(f"{d}/dump.pkl","rb")); C = pickle.load(open(f"{d}/chroma.pkl","rb")); T=P["tracks"]
    name2id = {T[c]["name"]: c for c in T}; rows = P["rows"]
    inside = np.array([q["inside"] for q in rows]); L = np.array([q["length"] for q in rows])
    top = [c[0] if c else (None, -1) for c in C]
    ok = np.array([q["inside"] and t[0] == name2id[q["name"]] for q, t in zip(rows, top)])
    ch = np.array([t[1] for t in top]); vs = np.array([q["votes"][0][1] if q["votes"] else 0 for q in rows])
    return inside, L, ok, ch, vs
ins, L, ok, ch, vs = load(sys.argv[1])
best = None
for tv in np.unique(np.round(vs, 3)):
    for tc in np.arange(0.5, 0.95, 0.005):
        m = (vs > tv) & (ch > tc)
        tnr = 1 - m[~ins].mean()
        if tnr < float(sys.argv[2]): continue
        tpr = (ok & m)[ins].mean()
        if best is None or tpr > best[0]: best = (tpr, tv, tc, tnr)
print("best on", sys.argv[1], best)
tv, tc = best[1], best[2]
for d in sys.argv[3:]:
    ins, L, ok, ch, vs = load(d)
    m = (vs > tv) & (ch > tc)
    print(d, "TNR %.1f TPR %.1f" % (100*(1-m[~ins].mean()), 100*(ok&m)[ins].mean()), "TNR by len", [round(100*(1-m[~ins & (L==l)].mean())) for l in (3,5,10,30)])
