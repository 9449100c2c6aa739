"""Like dump.py, plus the query windows' pre-sign values (asymmetric distances)."""
import sys, pickle, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from queries import cut_corpus, draw_queries
from musichash.library import Clip, Library
from musichash.indexer import encoder as E
CAP = []
orig = E._CRNNHHead.__call__
def patched(self, feats):
    out = orig(self, feats); CAP.append(out); return out
E._CRNNHHead.__call__ = patched
manifest, work, minutes, held_out, qset = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lib_files, held = cut_corpus(manifest, work / "audio", minutes, held_out, 0)
rows = []
with Library.open(work / "lib") as lib:
    for length, cond, inside, f, y, off in draw_queries(lib_files, held, 20, 0, qset):
        CAP.clear()
        enc = lib.encode(Clip(f.name, y), track=False)
        x = np.concatenate(CAP)
        assert (np.packbits(x > 0, axis=1) == enc.codes).all()
        rows.append(dict(x=x.astype(np.float32)))
pickle.dump(rows, open(work / "x.pkl", "wb"))
