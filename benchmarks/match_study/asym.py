import sys, pickle, numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from musichash.search import vote as V
from musichash.search.vote import SegmentHits
P = pickle.load(open(sys.argv[1] + "/dump.pkl", "rb")); X = pickle.load(open(sys.argv[1] + "/x.pkl", "rb"))
tracks, rows, bits = P["tracks"], P["rows"], P["bits"]
ids = sorted(tracks)
xb = np.concatenate([tracks[c]["codes"] for c in ids])
B = np.unpackbits(xb, axis=1).astype(np.float32) * 2 - 1  # [N,64] +-1
seg_track = np.concatenate([[c] * len(tracks[c]["codes"]) for c in ids])
seg_time = np.concatenate([tracks[c]["times"] for c in ids])
name2id = {tracks[c]["name"]: c for c in ids}
def run(mode, k=10, slack=2, p=1.0, kw=None):
    tops, scores = [], []
    for q, xr in zip(rows, X):
        h = xr["x"]
        if mode == "ham":
            w = np.ones_like(h)
        else:
            w = np.abs(h) ** p
        sw = w * np.where(h > 0, 1.0, -1.0)
        tot = w.sum(-1, keepdims=True)
        D = bits * (tot - sw @ B.T) / (2 * tot)
        if kw is not None:
            Dh = (64 - np.where(h > 0, 1.0, -1.0) @ B.T) / 2
            C = np.argsort(Dh, axis=1, kind="stable")[:, :kw]
            Dc = np.take_along_axis(D, C, 1)
            I = np.take_along_axis(C, np.argsort(Dc, axis=1, kind="stable")[:, :k], 1)
        else:
            I = np.argsort(D, axis=1, kind="stable")[:, :k]
        Dk = np.take_along_axis(D, I, 1)
        hits = SegmentHits.from_knn(q["times"], Dk, I, seg_track, seg_time, bits)
        hits = SegmentHits(hits.q_index, hits.q_time, hits.track_id, hits.t_time, Dk[hits.q_index, np.nonzero(I >= 0)[1]] , bits, hits.n_query_windows)
        # share slack compares distances; keep floats
        votes = V.vote(hits, max_tracks=10, share_slack=slack)
        tops.append(votes[0].track_id if votes else None); scores.append(votes[0].score if votes else 0.0)
    inside = np.array([q["inside"] for q in rows]); L = np.array([q["length"] for q in rows])
    ok = np.array([q["inside"] and t == name2id[q["name"]] for q, t in zip(rows, tops)])
    s = np.array(scores); neg = np.sort(s[~inside])
    t95 = neg[int(np.ceil(0.95 * len(neg))) - 1]; t90 = neg[int(np.ceil(0.9 * len(neg))) - 1]
    return ("top1 " + " ".join(f"{100*ok[inside & (L==l)].mean():5.1f}" for l in (3,5,10,30))
            + f" | t95 {t95:.3f} TPR {100*(ok&(s>t95))[inside].mean():5.1f} | t90 {t90:.3f} TPR {100*(ok&(s>t90))[inside].mean():5.1f}")
for cfg in eval(sys.argv[2]):
    print(cfg, run(*cfg), flush=True)
