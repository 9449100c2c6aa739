"""Dump per-query codes and truth for offline study of re-ranking / match rules."""
import sys, json, pickle, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from queries import cut_corpus, draw_queries
from musichash.library import Clip, Library
from musichash.search import engine

manifest, work, minutes, held_out, qset = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lib_files, held = cut_corpus(manifest, work / "audio", minutes, held_out, 0)
libdir = work / "lib"
with Library.open(libdir, write=True, code_model="crnnh64") as lib:
    lib.index([work / "audio" / "library"], workers=None)
with Library.open(libdir) as lib:
    index = lib.search_index()
    tracks = {}
    for t in lib.store.tracks("ok"):
        c = lib.store.get_codes(t.id)
        tracks[int(t.id)] = dict(path=t.path, name=Path(t.path).name, codes=c.segment_codes, times=c.segment_times, dur=t.duration_s)
    rows = []
    t0 = time.time()
    for length, cond, inside, f, y, off in draw_queries(lib_files, held, 20, 0, qset):
        enc = lib.encode(Clip(f.name, y), track=False)
        votes, _ = engine.query_codes(index, enc.codes, enc.times, lib.store.bits, top_k=10, k=10)
        rows.append(dict(length=length, cond=cond, inside=inside, name=f.name, off=off, codes=enc.codes, times=enc.times,
                         votes=[(v.track_id, v.score, v.offset_s, v.rate, v.votes, v.hamming) for v in votes]))
    print("queries", len(rows), time.time() - t0, file=sys.stderr)
pickle.dump(dict(tracks=tracks, rows=rows, bits=64), open(work / "dump.pkl", "wb"))
