"""Walk the README as a new user would: run its blocks marked ``walk`` as written, and fail on the first
that fails.

    python .ci/readme_walk.py [README.md]

``sh walk`` blocks run line by line with bash from the repository root (``set -e``), against a fresh
``/tmp/mh``; ``python walk`` blocks run with this interpreter in a scratch home whose ``~/Music`` holds
the demo renders the quick start made and whose working folder holds its clip as ``clip.mp3``, which
is what the Python example names. Prints each command, and ``N passed, N failed`` at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```(\w+) walk\n(.*?)^```", re.M | re.S)


def blocks(readme: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(readme.read_text())]


def run_sh(code: str) -> bool:
    shutil.rmtree("/tmp/mh", ignore_errors=True)
    for line in code.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        print(f"$ {line}", flush=True)
        if subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=ROOT).returncode != 0:
            print(f"readme walk: failed: {line}", file=sys.stderr)
            return False
    return True


def run_python(code: str) -> bool:
    demo, clip = ROOT / "corpus" / "demo", ROOT / "corpus" / "clip_quartet.mp3"
    if not demo.is_dir() or not clip.is_file():
        print("readme walk: the Python example needs the quick start's corpus/demo and clip first", file=sys.stderr)
        return False
    with tempfile.TemporaryDirectory() as home:
        shutil.copytree(demo, Path(home) / "Music")
        work = Path(home) / "work"
        work.mkdir()
        shutil.copy(clip, work / "clip.mp3")
        print(">>> (the README's Python example)", flush=True)
        env = {**os.environ, "HOME": home, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-c", code], cwd=work, env=env).returncode == 0


def main(argv: list[str]) -> int:
    readme = Path(argv[0]) if argv else ROOT / "README.md"
    found = blocks(readme)
    if not found:
        print(f"readme walk: no blocks marked walk in {readme}", file=sys.stderr)
        return 1
    passed = failed = 0
    for lang, code in found:
        ok = run_sh(code) if lang in ("sh", "bash") else run_python(code) if lang == "python" else False
        passed, failed = passed + ok, failed + (not ok)
        if not ok:
            break
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
