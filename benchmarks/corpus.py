"""Build a labelled benchmark corpus from Debian game music and rendered MIDI.

    python -m benchmarks.corpus --out corpus --quick
    python -m benchmarks.corpus --out corpus \\
        --packages planetblupi-music-ogg fb-music-high --midi 10 [--install]

Debian tracks are symlinked (or, for tracker modules, converted to FLAC at
44.1 kHz with ffmpeg) under ``out/debian/<package>/``; Bach chorales,
Palestrina mass movements and Monteverdi madrigals from music21's corpus are
rendered through FluidSynth with a seeded choice of GM instruments to
``out/midi/``. Every track is listed in ``out/manifest.jsonl``.
Re-running skips outputs that are already present with the recorded sha256.

Only packages in ALLOWED_PACKAGES are used; DENIED_NAMES are refused
outright, whatever the flags (see benchmarks/README.md for the rules).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
RATE = 44100

# The audio of these packages must never enter a corpus (licence terms we
# cannot honour for benchmark redistribution); matched on any part of the name
# so that versioned packages such as ``wesnoth-1.16-music`` are caught too.
DENIED_NAMES = ("wesnoth", "hedgewars", "freedroidrpg")

ALLOWED_PACKAGES = (
    "planetblupi-music-ogg",
    "fb-music-high",
    "supertuxkart-data",
    "neverball-data",
    "xmoto-data",
    "extremetuxracer-data",
    "boswars-data",
    "pushover-data",
    "tomatoes-data",
    "openclonk-data",
)
DEFAULT_PACKAGES = ("planetblupi-music-ogg", "fb-music-high")

DIRECT_EXTS = {".ogg", ".mp3", ".wav", ".flac"}
TRACKER_EXTS = {".xm", ".mod", ".it", ".s3m"}

# instrument family -> GM program per voice, top down (the last repeats for more voices)
INSTRUMENTS: dict[str, tuple[int, ...]] = {
    "strings": (40, 40, 41, 42),  # violin, violin, viola, cello
    "choir": (52,),  # choir aahs
    "organ": (19,),  # church organ
    "piano": (0,),  # acoustic grand
    "brass": (56, 56, 60, 57),  # trumpets, French horn, trombone
    "woodwinds": (73, 68, 71, 70),  # flute, oboe, clarinet, bassoon
}

Log = Callable[[str], None]


class CorpusError(Exception):
    """A corpus cannot be built as asked; the message names the fix."""


class ForbiddenPackageError(CorpusError):
    """A package on the deny list was requested."""


@dataclass(frozen=True)
class Track:
    """One manifest line. ``path`` is relative to the corpus folder."""

    id: str
    path: str
    source: str  # "debian" | "midi"
    labels: dict[str, str]
    duration_s: float
    sha256: str
    package: str | None = None
    version: str | None = None
    licence: str | None = None
    score: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}

    @classmethod
    def from_json(cls, d: dict) -> Track:
        return cls(**d)


# ---------------------------------------------------------------- packages


def check_package(name: str) -> None:
    """Raise unless ``name`` may be used: never a denied one, only an allowed one."""
    low = name.lower()
    if any(bad in low for bad in DENIED_NAMES):
        raise ForbiddenPackageError(
            f"{name}: refused; the audio of {', '.join(p + '*' for p in DENIED_NAMES)} "
            "packages must not be used. Pick packages from ALLOWED_PACKAGES in benchmarks/corpus.py"
        )
    if name not in ALLOWED_PACKAGES:
        raise CorpusError(
            f"{name}: not in ALLOWED_PACKAGES; check its licence, then add it in benchmarks/corpus.py"
        )


def package_version(pkg: str) -> str | None:
    """Installed version, or None when ``pkg`` is not installed."""
    r = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}\t${Version}", pkg], capture_output=True, text=True
    )
    if r.returncode != 0 or "install ok installed" not in r.stdout:
        return None
    return r.stdout.split("\t", 1)[1].strip()


def list_package_files(pkg: str) -> list[Path]:
    """Every regular file that ``pkg`` installed (``dpkg -L``)."""
    r = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=True)
    return sorted(p for p in map(Path, r.stdout.split("\n")) if p.suffix and p.is_file())


def licence_note(pkg: str) -> str | None:
    """First ``License:`` line of the package's copyright file (else a line naming a licence)."""
    copyright = Path("/usr/share/doc") / pkg / "copyright"
    if not copyright.is_file():
        return None
    lines = copyright.read_text(errors="replace").splitlines()
    for line in lines:
        if line.startswith("License:"):
            return line.split(":", 1)[1].strip()
    for line in lines:
        if "license" in line.lower():
            return line.strip()
    return None


def install(packages: Iterable[str], log: Log) -> None:
    packages = list(packages)
    for pkg in packages:
        check_package(pkg)
    log(f"apt-get install -y {' '.join(packages)}")
    r = subprocess.run(["apt-get", "install", "-y", *packages])
    if r.returncode != 0:
        raise CorpusError(f"apt-get install failed for {' '.join(packages)}; run apt-get update, as root")


# ---------------------------------------------------------------- files


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def duration(path: Path) -> float:
    """Seconds, from soundfile or else ffprobe."""
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except Exception:  # soundfile raises several types for formats it lacks
        r = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
            capture_output=True,
            text=True,
        )
        try:
            return float(r.stdout.strip())
        except ValueError:
            raise CorpusError(f"{path}: cannot read its duration with soundfile or ffprobe") from None


def ffmpeg_to_flac(src: Path, dest: Path, seconds: float | None = None) -> bool:
    """Decode ``src`` (libopenmpt handles tracker modules) to FLAC at 44.1 kHz; False on failure."""
    tmp = dest.with_name(dest.name + ".part.flac")
    cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(src)]
    if seconds:
        cmd += ["-t", str(seconds)]
    cmd += ["-ar", str(RATE), "-c:a", "flac", str(tmp)]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        return False
    tmp.replace(dest)  # atomic, so an interrupted run leaves no half file behind
    return True


def is_current(dest: Path, previous: dict[str, Track], rel: str) -> Track | None:
    """The previous record of ``rel`` if ``dest`` is still there with the recorded sha256."""
    old = previous.get(rel)
    if old is not None and dest.exists() and sha256(dest) == old.sha256:
        return old
    return None


# ---------------------------------------------------------------- debian


def debian_files(pkg: str) -> list[Path]:
    return [p for p in list_package_files(pkg) if p.suffix.lower() in DIRECT_EXTS | TRACKER_EXTS]


def collect_debian(
    out: Path,
    packages: Iterable[str],
    previous: dict[str, Track],
    *,
    max_files: int | None = None,
    clip_s: float | None = None,
    min_s: float = 10.0,
    copy: bool = False,
    log: Log = print,
) -> list[Track]:
    """Link or convert the audio of installed ``packages`` under ``out/debian/<pkg>/``.

    Files shorter than ``min_s`` (sound effects) are skipped. With ``clip_s``
    every file becomes a FLAC of its first ``clip_s`` seconds instead.
    """
    chosen: list[tuple[str, Path]] = []
    for pkg in packages:
        check_package(pkg)
        if package_version(pkg) is None:
            log(f"warning: {pkg} is not installed; skipped (add --install, or apt-get install {pkg})")
            continue
        for p in debian_files(pkg):
            try:
                long_enough = duration(p) >= min_s
            except CorpusError:
                log(f"warning: {p}: unreadable; skipped")
                continue
            if long_enough:
                chosen.append((pkg, p))
    if max_files is not None:  # round robin, so a quick corpus spans packages
        per_pkg: dict[str, list[Path]] = {}
        for pkg, p in chosen:
            per_pkg.setdefault(pkg, []).append(p)
        queues = list(per_pkg.items())
        chosen = []
        while len(chosen) < max_files and any(q for _, q in queues):
            for pkg, q in queues:
                if q and len(chosen) < max_files:
                    chosen.append((pkg, q.pop(0)))

    tracks = []
    versions: dict[str, str | None] = {}
    licences: dict[str, str | None] = {}
    for pkg, src in chosen:
        if pkg not in versions:
            versions[pkg], licences[pkg] = package_version(pkg), licence_note(pkg)
        tracker = src.suffix.lower() in TRACKER_EXTS
        if clip_s:
            name = f"{src.stem}.{clip_s:g}s.flac"
        elif tracker:
            name = src.stem + ".flac"
        else:
            name = src.name
        dest = out / "debian" / pkg / name
        rel = dest.relative_to(out).as_posix()
        old = is_current(dest, previous, rel)
        if old is not None:
            log(f"present  {rel}")
            tracks.append(old)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        if clip_s or tracker:
            if not ffmpeg_to_flac(src, dest, clip_s):
                log(f"warning: {src}: ffmpeg cannot decode it; skipped")
                continue
        elif copy:
            shutil.copy2(src, dest)
        else:
            dest.symlink_to(src)
        dur = duration(dest)
        log(f"added    {rel}")
        tracks.append(
            Track(
                id=f"debian/{pkg}/{Path(name).stem}",
                path=rel,
                source="debian",
                labels={"soundtrack": pkg},
                duration_s=round(dur, 3),
                sha256=sha256(dest),
                package=pkg,
                version=versions[pkg],
                licence=licences[pkg],
                extra={"original": str(src)},
            )
        )
    return tracks


# ---------------------------------------------------------------- midi


# composer -> which of music21's bundled scores to draw from (small, vocal-style part writing)
SCORE_SETS: dict[str, Callable[[Path], bool]] = {
    "bach": lambda p: p.name.startswith("bwv") and p.suffix == ".mxl",  # chorales
    "palestrina": lambda p: p.suffix == ".krn",  # mass movements
    "monteverdi": lambda p: p.name.startswith("madrigal") and p.suffix == ".mxl",
}
DEFAULT_COMPOSERS = ("bach", "palestrina", "monteverdi")


def scores(composer: str) -> list[Path]:
    """music21's bundled scores of ``composer`` in SCORE_SETS, in a stable order."""
    from music21 import corpus

    if composer not in SCORE_SETS:
        raise CorpusError(f"{composer}: no score set; pick from {', '.join(SCORE_SETS)}")
    keep = SCORE_SETS[composer]
    return sorted((Path(p) for p in corpus.getComposer(composer) if keep(Path(p))), key=lambda p: p.name)


def plan_midi(n: int, seed: int, pools: dict[str, list[Path]]) -> list[tuple[str, Path, str]]:
    """``n`` (composer, score, instrument family) triples, taking composers in turn.

    The same for the same seed and pools, and the first k of a plan of n are the
    plan of k; families are dealt from a seeded shuffle so that labels stay balanced.
    """
    rng = random.Random(seed)
    composers = sorted(c for c, pool in pools.items() if pool)
    if not composers:
        return []
    orders = {c: rng.sample(pools[c], len(pools[c])) for c in composers}
    families = sorted(INSTRUMENTS)
    rng.shuffle(families)
    plan: list[tuple[str, Path, str]] = []
    total = min(n, sum(len(o) for o in orders.values()))
    i = 0
    while len(plan) < total:
        c = composers[i % len(composers)]
        i += 1
        if orders[c]:  # a small pool may run out; the others go on
            plan.append((c, orders[c].pop(0), families[len(plan) % len(families)]))
    return plan


def trim_midi(path: Path, seconds: float, programs: tuple[int, ...]) -> None:
    """Keep the first ``seconds`` of a MIDI file, with voice k on GM ``programs[k]`` (last repeats).

    music21 writes most scores without program changes, hence the explicit ones.
    """
    import mido

    src = mido.MidiFile(str(path))
    channels = sorted({m.channel for t in src.tracks for m in t if hasattr(m, "channel") and m.channel != 9})
    track = mido.MidiTrack(
        mido.Message("program_change", channel=c, program=programs[min(k, len(programs) - 1)])
        for k, c in enumerate(channels)
    )
    elapsed, pending = 0.0, 0.0
    for msg in src:  # merged tracks, delta times in seconds
        elapsed += msg.time
        if elapsed > seconds:
            break
        pending += msg.time
        if msg.is_meta or msg.type == "program_change":  # the delta stays pending; tempo is baked in
            continue
        track.append(msg.copy(time=int(round(mido.second2tick(pending, src.ticks_per_beat, 500000)))))
        pending = 0.0
    track += [mido.Message("control_change", channel=c, control=123, value=0) for c in range(16)]
    out = mido.MidiFile(ticks_per_beat=src.ticks_per_beat)
    out.tracks.append(track)
    out.save(str(path))


def render(midi: Path, dest: Path, seconds: float) -> None:
    """FluidSynth to WAV, then at most ``seconds`` of it to FLAC."""
    import soundfile as sf

    wav = midi.with_suffix(".wav")
    r = subprocess.run(
        ["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(RATE), "-F", str(wav), SOUNDFONT, str(midi)],
        capture_output=True,
    )
    if r.returncode != 0 or not wav.is_file():
        raise CorpusError(f"{midi.name}: fluidsynth failed; apt-get install fluidsynth fluid-soundfont-gm")
    audio, rate = sf.read(str(wav), frames=int(seconds * RATE), dtype="float32")
    tmp = dest.with_name(dest.name + ".part.flac")
    sf.write(str(tmp), audio, rate, format="FLAC")
    tmp.replace(dest)


def render_midi(
    out: Path,
    n: int,
    seconds: float,
    previous: dict[str, Track],
    *,
    composers: Iterable[str] = DEFAULT_COMPOSERS,
    seed: int = 0,
    exclude_scores: Iterable[str] = (),
    log: Log = print,
) -> list[Track]:
    """Render ``n`` seeded scores to ``out/midi/<composer>-<score>-<family>-<seconds>s.flac``.

    ``exclude_scores`` holds manifest ``score`` values (``music21:bach/bwv299.mxl``)
    that must not be drawn, e.g. those of an evaluation corpus when this one is
    for fitting.
    """
    if n <= 0:
        return []
    if not Path(SOUNDFONT).is_file() or shutil.which("fluidsynth") is None:
        raise CorpusError("no FluidSynth or GM soundfont; apt-get install fluidsynth fluid-soundfont-gm")
    from music21 import corpus

    (out / "midi").mkdir(parents=True, exist_ok=True)
    tracks = []
    with tempfile.TemporaryDirectory() as tmp:
        excluded = set(exclude_scores)
        pools = {c: [p for p in scores(c) if f"music21:{c}/{p.name}" not in excluded] for c in composers}
        for composer, score, family in plan_midi(n, seed, pools):
            stem = f"{composer}-{score.stem}-{family}-{seconds:g}s".replace(" ", "_")
            dest = out / "midi" / f"{stem}.flac"
            rel = dest.relative_to(out).as_posix()
            old = is_current(dest, previous, rel)
            if old is not None:
                log(f"present  {rel}")
                tracks.append(old)
                continue
            midi = Path(tmp) / f"{stem}.mid"
            try:
                corpus.parse(str(score)).write("midi", fp=str(midi))
            except Exception as e:  # music21 raises many types on scores it cannot export
                log(f"warning: {score.name}: music21 cannot export it to MIDI ({e}); skipped")
                continue
            trim_midi(midi, seconds, INSTRUMENTS[family])
            render(midi, dest, seconds)
            log(f"added    {rel}")
            tracks.append(
                Track(
                    id=f"midi/{stem}",
                    path=rel,
                    source="midi",
                    labels={"composer": composer, "instrument_family": family},
                    duration_s=round(duration(dest), 3),
                    sha256=sha256(dest),
                    score=f"music21:{composer}/{score.name}",
                    extra={"programs": ",".join(map(str, INSTRUMENTS[family])), "seed": str(seed)},
                )
            )
    return tracks


# ---------------------------------------------------------------- manifest


def write_manifest(path: Path, tracks: Iterable[Track]) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w") as f:
        for t in tracks:
            f.write(json.dumps(t.to_json(), sort_keys=True) + "\n")
    tmp.replace(path)


def read_manifest(path: Path) -> list[Track]:
    if not path.is_file():
        return []
    return [Track.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def summary(tracks: list[Track]) -> str:
    """Markdown table: tracks and hours per source."""
    rows = ["| source | tracks | hours |", "|---|---:|---:|"]
    for src in sorted({t.source for t in tracks}):
        sel = [t for t in tracks if t.source == src]
        rows.append(f"| {src} | {len(sel)} | {sum(t.duration_s for t in sel) / 3600:.2f} |")
    rows.append(f"| total | {len(tracks)} | {sum(t.duration_s for t in tracks) / 3600:.2f} |")
    return "\n".join(rows)


def build(
    out: Path,
    packages: Iterable[str],
    *,
    midi: int,
    seconds: float,
    quick: bool = False,
    composers: Iterable[str] = DEFAULT_COMPOSERS,
    seed: int = 0,
    exclude_scores: Iterable[str] = (),
    copy: bool = False,
    log: Log = print,
) -> list[Track]:
    """Build or refresh the corpus in ``out`` and rewrite its manifest."""
    packages = list(packages)
    for pkg in packages:
        check_package(pkg)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    previous = {t.path: t for t in read_manifest(manifest)}
    tracks = collect_debian(
        out,
        packages,
        previous,
        max_files=3 if quick else None,
        clip_s=seconds if quick else None,
        copy=copy,
        log=log,
    )
    tracks += render_midi(out, midi, seconds, previous, composers=composers, seed=seed,
                          exclude_scores=exclude_scores, log=log)
    write_manifest(manifest, tracks)
    return tracks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("corpus"), help="corpus folder (default: corpus/)")
    ap.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), metavar="PKG",
                    help=f"Debian packages (default: {' '.join(DEFAULT_PACKAGES)})")
    ap.add_argument("--install", action="store_true", help="apt-get install -y the packages first")
    ap.add_argument("--midi", type=int, default=None, help="MIDI pieces to render (default 10; quick 2)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="length of each render (default 60; quick 20)")
    ap.add_argument("--quick", action="store_true",
                    help="3 Debian files clipped to --seconds and 2 renders, for tests and CI")
    ap.add_argument("--composers", nargs="+", default=list(DEFAULT_COMPOSERS), choices=sorted(SCORE_SETS),
                    help="music21 score sets to render, taken in turn (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed for score and instrument choice")
    ap.add_argument("--exclude-scores-of", type=Path, default=None, metavar="MANIFEST",
                    help="never render a score that this manifest lists (keeps a fit corpus disjoint)")
    ap.add_argument("--copy", action="store_true", help="copy Debian files instead of symlinking them")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    args = ap.parse_args(argv)
    midi = args.midi if args.midi is not None else (2 if args.quick else 10)
    seconds = args.seconds if args.seconds is not None else (20.0 if args.quick else 60.0)

    def log(msg: str) -> None:
        if not args.quiet or msg.startswith("warning"):
            print(msg, file=sys.stderr)

    try:
        for pkg in args.packages:
            check_package(pkg)
        if args.install:
            install(args.packages, log)
        exclude = [t.score for t in read_manifest(args.exclude_scores_of) if t.score] if args.exclude_scores_of else []
        tracks = build(args.out, args.packages, midi=midi, seconds=seconds, quick=args.quick,
                       composers=args.composers, seed=args.seed, exclude_scores=exclude,
                       copy=args.copy, log=log)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(tracks))
    print(f"manifest: {args.out / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
