"""Record a trained segment head's JSON as a shipped model's: its thresholds (fitted by
``benchmarks.eval_ident --write-thresholds`` into the checkpoint's JSON) become the main record and
the only ``thresholds_by_hop`` entry (thresholds fitted for an earlier head do not hold for this one),
and the dedup threshold stays the shipped one (``eval_ident`` does not fit dedup).

    python -m recipes.code_models.ship_segments CHECKPOINT_JSON SHIPPED_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    src, dst = (Path(p) for p in (argv or sys.argv[1:]))
    new = json.loads(src.read_text())
    shipped = json.loads(dst.read_text())
    if "thresholds" not in new:
        raise SystemExit(f"{src}: no thresholds; run benchmarks.eval_ident --write-thresholds with this checkpoint first")
    fitted = {**new["thresholds"], "dedup": shipped["thresholds"]["dedup"]}
    new["thresholds"] = fitted
    new["thresholds_by_hop"] = {str(fitted["segment_hop"]): fitted}
    dst.write_text(json.dumps(new, indent=1) + "\n")
    print(f"{dst}: thresholds fitted on {fitted['source']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
