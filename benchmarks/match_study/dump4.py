"""Binary low-rate library chroma against float query chroma at the voted offset and rate."""
import sys, pickle, time
from pathlib import Path
import numpy as np, librosa
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from queries import cut_corpus, draw_queries
from musichash.features.audio import load_audio, SAMPLE_RATE as SR
manifest, work, minutes, held_out, qset = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
P = pickle.load(open(work / "dump.pkl", "rb")); T = P["tracks"]
lib_files, held = cut_corpus(manifest, work / "audio", minutes, held_out, 0)
HOP = 1024; FH = HOP / SR
FRS = (0.5, 1.0)
def chroma(y):
    S = np.abs(librosa.stft(y, n_fft=4096, hop_length=HOP)) ** 2
    return librosa.feature.chroma_stft(S=S, sr=SR, n_chroma=12)  # [12, F], max-normalised per frame
def pool(C, fr, t0=0.0, rate=1.0, n=None):
    """mean chroma over frames [t0 + j*fr*..]: returns [12, n] (clip-time frames mapped by rate)"""
    F = C.shape[1]; t = np.arange(F) * FH
    j = np.floor((t - t0) / fr).astype(int)
    n = n if n is not None else j.max() + 1
    ok = (j >= 0) & (j < n)
    out = np.zeros((12, n)); cnt = np.zeros(n)
    np.add.at(out.T, j[ok], C[:, ok].T); np.add.at(cnt, j[ok], 1)
    return out / np.maximum(cnt, 1), cnt
tbits = {}
def track_bits(c, fr):
    if (c, fr) not in tbits:
        M, cnt = pool(chroma(load_audio(T[c]["path"])), fr)
        tbits[(c, fr)] = (M > M.mean(0, keepdims=True))
    return tbits[(c, fr)]
out = []
t0 = time.time()
for (length, cond, inside, f, y, off), q in zip(draw_queries(lib_files, held, 20, 0, qset), P["rows"]):
    Cq = chroma(y); Fq = Cq.shape[1]
    res = {}
    for (c, score, o, r, nv, hm) in q["votes"][:1]:
        for fr in FRS:
            Bt = track_bits(c, fr) * 2.0 - 1  # [12, Nt]
            best = -1
            for do in np.arange(-0.75, 0.751, 0.125):
                oo = o + do
                # library frames fully inside the clip's span: [j*fr, (j+1)*fr] within [oo, oo + r*length]
                j0 = int(np.ceil(oo / fr)); j1 = int(np.floor((oo + r * Fq * FH) / fr)) - 1
                j0 = max(j0, 0); j1 = min(j1, Bt.shape[1] - 1)
                if j1 < j0: continue
                # query frames: clip time tq maps to track time oo + r*tq
                tq = np.arange(Fq) * FH
                jj = np.floor((oo + r * tq) / fr).astype(int)
                sel = (jj >= j0) & (jj <= j1)
                n = j1 - j0 + 1
                M = np.zeros((12, n)); np.add.at(M.T, jj[sel] - j0, Cq[:, sel].T)
                M = M - M.mean(0, keepdims=True)
                M = M / (np.linalg.norm(M, axis=0, keepdims=True) + 1e-9)
                for rot in (-1, 0, 1):
                    A = np.roll(Bt[:, j0:j1 + 1], rot, axis=0)
                    A = A / np.sqrt(12)
                    best = max(best, float((A * M).sum(0).mean()))
            res[fr] = best
    out.append(res)
print("done", time.time() - t0, file=sys.stderr)
pickle.dump(out, open(work / "chroma4.pkl", "wb"))
