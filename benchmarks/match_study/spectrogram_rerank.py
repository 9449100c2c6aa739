"""Study: top-1 of 5 s clips when the first 3 tracks are re-ranked by how their audio's spectrogram agrees with the clip's.

    python benchmarks/match_study/spectrogram_rerank.py LIBRARY N

LIBRARY: a library eval_engine.py built (its tracks' files still on disk); N clips per degradation of
the `full` query set, drawn from the library's tracks (seed 0). ``recording.agreement`` (dedup's check)
at each track's vote offset and rate; "score+2xspec" is Library.verify's rule with it in chroma's place.
"""
import sys, collections, numpy as np
sys.path.insert(0, 'benchmarks')
from pathlib import Path
from queries import SETS, QuerySet, draw_queries
from musichash.library import Library, Clip
from musichash.search import engine, recording
lib = Library.open(sys.argv[1])
index = lib.search_index()
tracks = {int(t.id): t for t in lib.store.tracks("ok")}
files = sorted(Path(t.path) for t in tracks.values())
qs = SETS['full']
qs5 = QuerySet('5s', (5.0,), qs.conditions, ())
spectra = recording.Spectra(size=64)
stats = collections.defaultdict(lambda: [0, 0, 0, 0])
for length, cond, inside, f, y, off in draw_queries(files, [], int(sys.argv[2]), 0, qs5):
    enc = lib.encode(Clip(f.name, y), track=False, harmony=True)
    votes, _ = engine.query_codes(index, enc.codes, enc.times, lib.store.bits, top_k=10, relaxed=enc.relaxed)
    votes, agree = lib.verify(enc, votes)
    cands = votes[:3]
    c = recording.spectrogram(y)
    ag = []
    for v in cands:
        s = spectra.get(tracks[v.track_id].path)
        a = recording.agreement(c, s, v.offset_s, v.rate) if s is not None else None
        ag.append(-1.0 if a is None else a)
    truth = str(f.absolute())
    names = [tracks[v.track_id].path for v in cands]
    shipped = names[0] == truth if names else False
    best = names[int(np.argmax(ag))] == truth if names else False
    comb = names[int(np.argmax([v.score / cands[0].score + 2 * a for v, a in zip(cands, ag)]))] == truth if names else False
    st = stats[cond]; st[0] += 1; st[1] += shipped; st[2] += best; st[3] += comb
tot = np.sum(list(stats.values()), axis=0)
for cond, st in list(stats.items()) + [('ALL', tot)]:
    print(f"{cond:12s} n={st[0]:3d} shipped {100*st[1]/st[0]:5.1f}  spectrogram {100*st[2]/st[0]:5.1f}  score+2xspec {100*st[3]/st[0]:5.1f}")
