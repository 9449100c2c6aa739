"""Chroma agreement between each query and its top candidates at the voted offset and rate."""
import sys, pickle, time
from pathlib import Path
import numpy as np, librosa
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from queries import cut_corpus, draw_queries
from musichash.features.audio import load_audio, SAMPLE_RATE as SR
manifest, work, minutes, held_out, qset = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
P = pickle.load(open(work / "dump.pkl", "rb")); T = P["tracks"]
lib_files, held = cut_corpus(manifest, work / "audio", minutes, held_out, 0)
HOP = 1024
def chroma(y):
    S = np.abs(librosa.stft(y, n_fft=4096, hop_length=HOP)) ** 2
    C = librosa.feature.chroma_stft(S=S, sr=SR, n_chroma=12)
    C = C / (np.linalg.norm(C, axis=0, keepdims=True) + 1e-9)
    return C  # [12, F]
tchroma = {}
def track_chroma(c):
    if c not in tchroma:
        tchroma[c] = chroma(load_audio(T[c]["path"]))
    return tchroma[c]
out = []
t0 = time.time()
for (length, cond, inside, f, y, off), q in zip(draw_queries(lib_files, held, 20, 0, qset), P["rows"]):
    assert q["name"] == f.name
    Cq = chroma(y)
    F = Cq.shape[1]
    res = []
    for (c, score, o, r, nv, hm) in q["votes"][:3]:
        Ct = track_chroma(c)
        best = -1
        for do in np.arange(-0.768, 0.769, 0.128):
            idx = np.rint(((o + do) + r * np.arange(F) * HOP / SR) * SR / HOP).astype(int)
            ok = (idx >= 0) & (idx < Ct.shape[1])
            if ok.sum() < F // 2: continue
            A = Ct[:, idx[ok]]
            for rot in (-1, 0, 1):
                s = float((np.roll(A, rot, axis=0) * Cq[:, ok]).sum(0).mean())
                best = max(best, s)
        res.append((c, best))
    out.append(res)
print("done", time.time() - t0, file=sys.stderr)
pickle.dump(out, open(work / "chroma.pkl", "wb"))
