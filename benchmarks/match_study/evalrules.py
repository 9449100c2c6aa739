import sys, pickle, numpy as np
out = pickle.load(open(sys.argv[1], "rb"))
RULES = {
 "vscore": lambda f: f["vscore"],
 "peak": lambda f: f["peak"],
 "peak-bg": lambda f: f["peak"] - f["bg"],
 "peak-meanw": lambda f: f["peak"] - f["meanw"],
 "peak*(peak-bg)": lambda f: f["peak"] * (f["peak"] - f["bg"]),
 "v+peak-bg": lambda f: f["vscore"] + f["peak"] - f["bg"],
}
thr_from = {}
if len(sys.argv) > 2:
    thr_from = dict(pickle.load(open(sys.argv[2], "rb")))
res = {}
for name, fn in RULES.items():
    tops, stats = [], []
    for o in out:
        fs = o["feats"]
        if not fs:
            tops.append(None); stats.append(0.0); continue
        best = max(fs, key=fn)
        tops.append(best["c"]); stats.append(fn(best))
    stats = np.array(stats)
    inside = np.array([o["q"]["inside"] for o in out])
    L = np.array([o["q"]["length"] for o in out])
    ok = np.array([t is not None and t == o["truth"] for t, o in zip(tops, out)])
    neg = np.sort(stats[~inside])
    thr = neg[int(np.ceil(0.95 * len(neg))) - 1]
    line = f"{name:16s} top1 " + " ".join(f"{100*ok[inside & (L==l)].mean():5.1f}" for l in (3,5,10,30))
    line += f" | thr95 {thr:.3f} TPR {100*(ok & (stats>thr))[inside].mean():5.1f}"
    for tnr in (0.9,):
        t9 = neg[int(np.ceil(tnr * len(neg))) - 1]
        line += f" | thr90 {t9:.3f} TPR {100*(ok & (stats>t9))[inside].mean():5.1f} (5/10s {100*(ok & (stats>t9))[inside&(L==5)].mean():.0f}/{100*(ok & (stats>t9))[inside&(L==10)].mean():.0f})"
    if name in thr_from:
        t = thr_from[name]
        line += f" | cal-thr {t:.3f}: TNR {100*(stats[~inside] <= t).mean():.0f} by len " + "/".join(f"{100*(stats[~inside & (L==l)] <= t).mean():.0f}" for l in (3,5,10,30)) + f" TPR {100*(ok & (stats>t))[inside].mean():.1f}"
    res[name] = thr
    print(line)
if len(sys.argv) <= 2:
    pickle.dump(res, open(sys.argv[1] + ".thr", "wb"))
