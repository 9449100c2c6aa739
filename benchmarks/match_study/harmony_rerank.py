"""Top-1 when the vote's first tracks are re-ranked by chroma agreement too (dump.pkl, chroma.pkl of each folder).

    python benchmarks/match_study/harmony_rerank.py /tmp/mr/cal /tmp/mr/eval
"""
import pickle, sys
def load(d):
    P = pickle.load(open(f"{d}/dump.pkl", "rb")); C = pickle.load(open(f"{d}/chroma.pkl", "rb")); T = P["tracks"]
    name2id = {T[c]["name"]: c for c in T}
    return [(q, c, name2id.get(q["name"])) for q, c in zip(P["rows"], C)]
sets = {d: load(d) for d in sys.argv[1:]}
def rule_ratio(r, m):  # the best chroma among the first m tracks scoring at least r x the best score
    def pick(q, c):
        top = q["votes"][0][1]
        return max((ch, cid) for (cid, ch), v in zip(c[:m], q["votes"]) if v[1] >= r * top)[1]
    return pick
def rule_lin(w, m):  # the best score / best score + w x chroma among the first m tracks
    def pick(q, c):
        top = q["votes"][0][1]
        return max((v[1] / top + w * ch, cid) for (cid, ch), v in zip(c[:m], q["votes"]))[1]
    return pick
rules = {"none": lambda q, c: c[0][0]}
for r in (0.3, 0.5, 0.7):
    for m in (2, 3): rules[f"ratio{r}/{m}"] = rule_ratio(r, m)
for w in (0.5, 1, 2, 4): rules[f"lin{w}/3"] = rule_lin(w, 3)
for name, f in rules.items():
    out = []
    for d, rows in sets.items():
        byL = {}
        for q, c, tid in rows:
            if not q["inside"] or not c: continue
            s = byL.setdefault(q["length"], [0, 0]); s[0] += 1; s[1] += f(q, c) == tid
        out.append(" ".join("%.1f" % (100 * byL[L][1] / byL[L][0]) for L in sorted(byL)))
    print(f"{name:12s} " + " | ".join(out))
