import sys, pickle, numpy as np, itertools
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from musichash.search import vote as V
from musichash.search.vote import SegmentHits
P = pickle.load(open(sys.argv[1], "rb"))
tracks, rows, bits = P["tracks"], P["rows"], P["bits"]
POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
ids = sorted(tracks)
xb = np.concatenate([tracks[c]["codes"] for c in ids])
seg_track = np.concatenate([[c] * len(tracks[c]["codes"]) for c in ids])
seg_time = np.concatenate([tracks[c]["times"] for c in ids])
name2id = {tracks[c]["name"]: c for c in ids}
Dall = [POP[q["codes"][:, None, :] ^ xb[None]].sum(-1) for q in rows]
def run(k, slack, tol=0.75, wfn=None):
    tops, scores = [], []
    for q, D in zip(rows, Dall):
        I = np.argsort(D, axis=1, kind="stable")[:, :k]
        Dk = np.take_along_axis(D, I, 1)
        hits = SegmentHits.from_knn(q["times"], Dk, I, seg_track, seg_time, bits)
        if wfn is not None:
            old = V.hit_weight; V.hit_weight = wfn
        votes = V.vote(hits, max_tracks=10, share_slack=slack, offset_tolerance_s=tol)
        if wfn is not None:
            V.hit_weight = old
        tops.append(votes[0].track_id if votes else None); scores.append(votes[0].score if votes else 0.0)
    inside = np.array([q["inside"] for q in rows]); L = np.array([q["length"] for q in rows])
    ok = np.array([q["inside"] and t == name2id[q["name"]] for q, t in zip(rows, tops)])
    s = np.array(scores); neg = np.sort(s[~inside])
    t95 = neg[int(np.ceil(0.95 * len(neg))) - 1]; t90 = neg[int(np.ceil(0.9 * len(neg))) - 1]
    return ("top1 " + " ".join(f"{100*ok[inside & (L==l)].mean():5.1f}" for l in (3,5,10,30))
            + f" | t95 {t95:.3f} TPR {100*(ok&(s>t95))[inside].mean():5.1f} | t90 {t90:.3f} TPR {100*(ok&(s>t90))[inside].mean():5.1f}")
cfgs = eval(sys.argv[2])
for cfg in cfgs:
    print(cfg, run(*cfg), flush=True)
