"""Code score and chroma agreement of the top track, alone and together (dump.pkl, chroma.pkl of both corpora)."""
import pickle, sys, numpy as np
cal_dir, eval_dir = sys.argv[1], sys.argv[2]
def load(d):
    P = pickle.load(open(f"{d}/dump.pkl","rb")); C = pickle.load(open(f"{d}/chroma.pkl","rb")); T=P["tracks"]
    name2id = {T[c]["name"]: c for c in T}; rows = P["rows"]
    inside = np.array([q["inside"] for q in rows]); L = np.array([q["length"] for q in rows])
    top = [c[0] if c else (None, -1) for c in C]
    ok = np.array([q["inside"] and t[0] == name2id[q["name"]] for q, t in zip(rows, top)])
    ch = np.array([t[1] for t in top]); vs = np.array([q["votes"][0][1] if q["votes"] else 0 for q in rows])
    return inside, L, ok, ch, vs
cal, ev = load(cal_dir), load(eval_dir)
def fit(stat, data, tnr=0.95):
    ins = data[0]; s = stat(data); neg = np.sort(s[~ins]); return neg[int(np.ceil(tnr*len(neg)))-1]
def rep(stat, t, data):
    ins, L, ok, ch, vs = data; s = stat(data); m = s > t
    return "TNR %.1f TPR %.1f" % (100*(1-m[~ins].mean()), 100*(ok&m)[ins].mean())
for name, st in [("v", lambda d: d[4]), ("ch", lambda d: d[3])]:
    t = fit(st, cal)
    print(name, "thr %.4f" % t, "cal", rep(st, t, cal), "| eval", rep(st, t, ev))
for tv in (0.136, 0.172):
    for tc in (0.6, 0.65, 0.7, 0.725):
        for nm, d in (("cal", cal), ("eval", ev)):
            ins, L, ok, ch, vs = d; m = (vs > tv) & (ch > tc)
            print(f"AND v>{tv} ch>{tc} {nm}: TNR {100*(1-m[~ins].mean()):.1f} TPR {100*(ok&m)[ins].mean():.1f}", end="  ")
        print()
# out-of-library clips of the evaluation corpus, per held-out track
P = pickle.load(open(f"{eval_dir}/dump.pkl","rb")); C = pickle.load(open(f"{eval_dir}/chroma.pkl","rb")); T = P["tracks"]
by = {}
for q, c in zip(P["rows"], C):
    if q["inside"] or not c: continue
    by.setdefault(q["name"], []).append((q["votes"][0][1], c[0][1], T[q["votes"][0][0]]["name"]))
for n, l in by.items():
    v = np.array([x[0] for x in l]); ch = np.array([x[1] for x in l])
    print(n, f"code score > 0.172: {100*(v > 0.172).mean():.0f}%  chroma > 0.725: {100*(ch > 0.725).mean():.0f}%")
