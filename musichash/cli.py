"""The ``musichash`` command line: a thin shell over the library.

Library code raises :class:`~musichash.errors.MusichashError` subclasses; only
this module turns them into one-line ``Error: ...`` messages and exit codes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
from pathlib import Path

import click

from musichash import __version__
from musichash.errors import MusichashError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON Lines when several objects).")(f)


def device_option(f):
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="Where the model and the search run: auto (CUDA GPU if usable, else CPU), cpu, cuda, cuda:N.",
    )(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(f)


def model_option(default: str):
    return click.option("--model", default=default, show_default=True, help="Registered model name (see `musichash models`).")


class _UsageError(click.ClickException):
    """A one-line ``Error: ...`` with the exit status of a usage error (2)."""

    exit_code = 2


def reports_errors(f):
    """Turn library errors into ``Error: ...`` on stderr and exit status 1 (2 for a bad --db-url), without a traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from musichash.indexer.records import DatabaseURLError

        try:
            return f(*args, **kwargs)
        except DatabaseURLError as e:
            raise _UsageError(f"--db-url {e}") from e
        except MusichashError as e:
            raise click.ClickException(str(e)) from e

    return wrapper


def emit(obj: dict) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False))


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="musichash")
def cli():
    """musichash: find music by its sound.

    Deep binary codes for query by example, deduplication and recommendation
    candidates, with tags on every answer.
    """


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_option("MTT_musicnn")
@click.option("-n", "--top", default=5, show_default=True, type=click.IntRange(1), help="Tags shown per file.")
@json_option
@device_option
@quiet_option
@reports_errors
def tag(files: tuple[Path, ...], model: str, top: int, as_json: bool, device: str, quiet: bool):
    """Tag audio FILES with the pretrained tagger (mean over 3 s windows).

    Files that cannot be read get a one-line error; the others are still
    tagged, and the exit status is 1 if any failed.
    """
    from tqdm import tqdm

    from musichash.features.audio import AudioError, audio_info
    from musichash.models.tagging import Tagger

    tagger = Tagger(model, device)
    show_bar = not (quiet or as_json) and sys.stderr.isatty()
    failed = 0
    for path in files:
        try:
            total = audio_info(path).duration_s if show_bar else None
            with tqdm(total=total, unit="s", desc=path.name, disable=not show_bar, leave=False, file=sys.stderr,
                      bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}, {rate_fmt}]") as bar:
                result = tagger.tag_file(path, progress=bar.update)
        except AudioError as e:
            failed += 1
            click.echo(f"Error: {e}", err=True)
            if as_json:
                emit({"path": str(path), "tags": [], "error": e.reason})
            continue
        scores = result.top(top)
        if as_json:
            emit({"path": result.path, "tags": [{"tag": s.tag, "p": round(s.p, 6)} for s in scores]})
            continue
        click.echo(f"{result.path}  ({_duration(result.duration_s)}, {result.n_windows} windows)")
        width = max(len(s.tag) for s in scores)
        for s in scores:
            click.echo(f"  {s.tag:<{width}}  {s.p:.3f}")
    if failed:
        raise click.ClickException(f"{failed} of {len(files)} files could not be tagged")


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Also list the tiny test-only models.")
@json_option
def models(show_all: bool, as_json: bool):
    """List the available models and which one is the default."""
    from musichash.models import DEFAULT_CODE_MODEL, DEFAULT_TAGGER, REGISTRY
    from musichash.search.thresholds import Thresholds

    rows = [
        {"name": s.name, "kind": s.kind, "bits": s.bits, "default": s.name in (DEFAULT_TAGGER, DEFAULT_CODE_MODEL),
         "description": s.description,
         **({"thresholds": Thresholds.of(s.name).to_dict()} if s.kind == "hash" else {})}
        for s in REGISTRY.values()
        if show_all or not s.test_only
    ]
    if as_json:
        emit({"models": rows})
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "*" if r["default"] else " "
        bits = "-" if r["bits"] is None else str(r["bits"])
        calibrated = f"; {Thresholds(**r['thresholds']).describe()}" if "thresholds" in r else ""
        click.echo(f"{mark} {r['name']:<{width}}  {r['kind']:<7} {bits:>4}  {r['description']}{calibrated}")


@cli.command("convert-weights")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("musicnn-weights"), show_default=True,
    help="Folder for the .safetensors files, PROVENANCE.json and the licence.",
)
@json_option
@reports_errors
def convert_weights(source: Path, out: Path, as_json: bool):
    """Convert the TensorFlow checkpoints of a musicnn wheel (or unpacked folder) to safetensors.

    Get the wheel with: pip download --no-deps musicnn
    """
    from musichash.models.convert import convert_musicnn_wheel

    provenance = convert_musicnn_wheel(source, out)
    if as_json:
        emit(provenance)
        return
    for name, rec in provenance["models"].items():
        click.echo(f"{out / (name + '.safetensors')}  {rec['parameters']:,} parameters")


# ------------------------------------------------------------------ library


def library_options(f):
    f = click.option(
        "--db-url", metavar="URL", envvar="MUSICHASH_DB_URL",
        help="SQLAlchemy URL of the metadata database (default: library.db in the library folder).",
    )(f)
    return click.option(
        "--library", "library", type=click.Path(file_okay=False, path_type=Path), envvar="MUSICHASH_LIBRARY",
        help="Library folder (default: $MUSICHASH_LIBRARY, else ~/.local/share/musichash).",
    )(f)


@contextlib.contextmanager
def _open(library: Path | None, db_url: str | None, *, write: bool = False, device: str = "auto",
          code_model: str | None = None, warn: bool = True, shards: int | None = None,
          tagger: str | None = None, segment_hop: int | None = None):
    """The library, opened for the command; warnings about what opening repaired (``warn``), and after a
    read, about tracks left out because their codes are damaged."""
    from musichash.indexer.store import CODES_FILE
    from musichash.library import Library
    from musichash.models.registry import superseded_by

    def warn_repaired(report, when: str) -> None:
        click.echo(
            f"Warning: {lib.folder}: {when} ({len(report.marked_pending)} tracks to redo, "
            f"{len(report.orphans_removed)} stray code groups removed"
            + (f", the damaged codes file kept as {report.codes_set_aside}" if report.codes_set_aside else "")
            + "); `musichash index` completes it",
            err=True,
        )

    lib = Library.open(library, db_url=db_url, write=write, device=device, code_model=code_model, shards=shards,
                       tagger=tagger, segment_hop=segment_hop)
    with lib:
        opened = lib.store.repair_report
        if opened.changed and warn:
            warn_repaired(opened, "repaired after an interrupted run or damage")
        newer = superseded_by(lib.code_model)
        if newer:
            click.echo(f"Note: {lib.folder} holds interim codes ({lib.code_model}); the default is now CRNNH ({newer}), "
                       f"better at finding clips: to use it, index the music again into a new --library", err=True)
        yield lib
        if lib.store.repair_report is not opened and warn:
            warn_repaired(lib.store.repair_report, "codes.h5 turned out damaged while writing and was salvaged")
        if not write and lib.damaged and warn:
            click.echo(f"Warning: {lib.folder / CODES_FILE}: {len(lib.damaged)} tracks left out, their stored codes "
                       f"are damaged or missing; run `musichash check --repair`", err=True)


def _cluster_address(value: str | None) -> str | None:
    """``--cluster``'s value: None (not asked), '' (a cluster on this machine) or an address."""
    if value is None or value == "local":
        return None if value is None else ""
    if Path(value).exists():  # `--cluster MUSIC/` took the first path as the address
        raise click.BadParameter(f"{value!r} is a path, not a Ray address; put --cluster after the paths, "
                                 f"or give the address (auto, ray://HOST:PORT)", param_hint="--cluster")
    return value


def _bar(quiet: bool, as_json: bool):
    from tqdm import tqdm

    show = not (quiet or as_json) and sys.stderr.isatty()
    return functools.partial(tqdm, disable=not show, file=sys.stderr, leave=False)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}


def _shown(path) -> str:
    """A path as one line of text: control characters (a newline in a file name) escaped as in Python."""
    return str(path).translate(_CONTROL)


def _tags_text(tags) -> str:
    return ", ".join(t.tag for t in tags[:3])


def _clock(seconds: float) -> str:
    m, s = divmod(max(seconds, 0.0), 60)
    return f"{int(m)}:{s:04.1f}"


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@library_options
@click.option("--prune", is_flag=True, help="Also drop tracks whose files are gone.")
@click.option("--code-model", default=None, help="Code model of a new library (default: the default of `musichash models`).")
@click.option("--workers", type=click.IntRange(0), default=None, help="Decoding processes (0: decode in the main process).")
@click.option("--tagger", default=None,
              help="Tags of a new library from a trained tagger (a shipped one, e.g. fcn4_rendered, or a checkpoint of "
                   "`musichash train-tagger`) instead of the code model's tag head; recorded in the library.")
@click.option("--segment-hop-frames", type=click.IntRange(1), default=None,
              help="Frames (16 ms) between the segment codes of a new library, a multiple of 16 (default: 48); an existing library keeps its own.")
@json_option
@device_option
@quiet_option
@click.option("--cluster", "cluster", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              callback=lambda ctx, p, v: _cluster_address(v),
              help="Decode and encode on a Ray cluster: 'auto' (the one `ray start` made here), ray://HOST:PORT, "
                   "or nothing (a new one on this machine); put it after the paths (extra: cluster).")
@click.option("--shards", type=click.IntRange(1, 1000), default=None,
              help="Codes files (and segment indexes) a new library spreads its codes over (default 1).")
@reports_errors
def index(paths, library, db_url, prune, code_model, workers, tagger, segment_hop_frames, as_json, device, quiet,
          cluster, shards):
    """Add or update the audio files under PATHS (folders are scanned recursively).

    Unchanged files are skipped, moved files are recognised by their content,
    and files that cannot be decoded are listed at the end without stopping the run.
    """
    from musichash.indexer.pipeline import Progress

    bar_factory = _bar(quiet, as_json)

    class Bar(Progress):
        def start(self, n_files, total_s):
            self.n_files, self.done = n_files, 0
            self.bar = bar_factory(total=round(total_s), unit="s", unit_scale=True, desc=f"indexing {n_files} files",
                                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}{postfix}]")

        def advance(self, path, seconds):
            self.done += 1
            self.bar.set_postfix_str(f"{self.done}/{self.n_files} files, {Path(path).name[:30]}", refresh=False)
            self.bar.update(seconds)

    with _open(library, db_url, write=True, device=device, code_model=code_model, shards=shards, tagger=tagger,
               segment_hop=segment_hop_frames) as lib:
        if not (quiet or as_json) and sys.stderr.isatty() and cluster is None:
            click.echo(f"loading the code model {lib.code_model}...", err=True)
        if cluster is None:
            lib.model  # noqa: B018  (loaded before the bar starts, so the bar's rate is the indexing's)
        progress = Bar()
        try:
            report = lib.index(paths, prune=prune, workers=workers, progress=progress, cluster=cluster)
        finally:
            if hasattr(progress, "bar"):
                progress.bar.close()
    if as_json:
        emit({
            "library": str(lib.folder), "added": len(report.added), "updated": len(report.updated),
            "unchanged": report.unchanged, "moved": [list(m) for m in report.moved],
            "copies": [list(c) for c in report.copies], "pruned": list(report.pruned),
            "failed": [{"path": f.path, "reason": f.reason} for f in report.failed],
            "audio_s": round(report.audio_s, 2), "seconds": round(report.seconds, 2),
            "damaged_redone": list(report.damaged), "tagger": lib.tagger,
        })
        return
    speed = f", {report.audio_s / report.seconds:.0f}x real time" if report.audio_s and report.seconds else ""
    click.echo(
        f"{lib.folder}: {len(report.added)} added, {len(report.updated)} updated, {report.unchanged} unchanged, "
        f"{len(report.moved)} moved, {len(report.copies)} exact copies, {len(report.pruned)} pruned, "
        f"{len(report.failed)} failed ({_duration(report.audio_s)} of audio in {report.seconds:.1f} s{speed})"
    )
    for old, new in report.moved:
        click.echo(f"  moved: {_shown(old)} -> {_shown(new)}")
    for path, original in report.copies:
        click.echo(f"  copy: {_shown(path)} (same bytes as {_shown(original)})")
    if report.damaged:
        click.echo(f"  {len(report.damaged)} tracks with damaged codes redone")
    for f in report.failed:
        click.echo(f"  skipped: {_shown(f.path)}: {f.reason}", err=True)


@cli.command()
@click.argument("clips", nargs=-1, required=True, type=click.Path(path_type=Path))
@library_options
@click.option("-k", "--top-k", default=5, show_default=True, type=click.IntRange(1), help="Tracks listed per clip.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="Score above which a clip counts as a match (default: the code model's calibrated value).")
@click.option("--chroma-threshold", type=click.FloatRange(-1, 1), default=None, help="Harmony agreement with the best track above which a clip counts as a match; -1 turns the check off (default: the code model's calibrated value).")
@json_option
@device_option
@quiet_option
@reports_errors
def search(clips, library, db_url, top_k, threshold, chroma_threshold, as_json, device, quiet):
    """Find the tracks that CLIPS (files or folders of clips, 2 s or longer) come from, and where."""
    from musichash.indexer.pipeline import AUDIO_EXTENSIONS, scan
    from musichash.search.results import search_json

    files, missing = scan(clips)
    for m in missing:
        click.echo(f"Error: {_shown(m.path)}: {m.reason}", err=True)
    failed = len(missing)
    with _open(library, db_url, device=device) as lib:
        if not files and not missing:
            raise click.ClickException(f"{', '.join(map(_shown, clips))}: no audio files found (searched for: "
                                       f"{', '.join(sorted(AUDIO_EXTENSIONS))})")
        t = lib.thresholds if threshold is None and chroma_threshold is None else None
        for r in lib.search(files, top_k=top_k, threshold=threshold, chroma_threshold=chroma_threshold):
            if r.error is not None:
                failed += 1
                click.echo(f"Error: {_shown(r.query)}: {r.error}", err=True)
                if as_json:
                    emit(search_json(r))
                continue
            if r.note is not None:
                click.echo(f"Note: {_shown(r.query)}: {r.note}", err=True)
            if as_json:
                emit(search_json(r))
                continue
            verdict = "match" if r.match else "no match" + _why_not(r, t)
            click.echo(f"{_shown(r.query)}  ({r.duration_s:.1f} s): {verdict}")
            for i, h in enumerate(r.results if r.match else r.results[:1], 1):
                lead = f"{i}." if r.match else "nearest:"
                harmony = f"  harmony {r.chroma:.2f}" if i == 1 and r.chroma is not None else ""
                click.echo(
                    f"  {lead} {_shown(h.path)}  at {_clock(h.offset_s)}  score {h.score:.2f}{harmony}  hamming {h.hamming}  [{_tags_text(h.tags)}]"
                )
    if failed:
        raise click.ClickException(f"{failed} of {len(files) + len(missing)} clips could not be searched")


def _why_not(r, t) -> str:
    """Which check a clip failed, at the model's thresholds: a score is the weighted share of the clip's
    windows that agree on one offset in the track (0 to 1), and the harmony check can reject a clip
    whose score is high (music with the same texture in another key or progression)."""
    if t is None or not r.results:
        return ""
    if r.results[0].score <= t.match:
        return f" (score {r.results[0].score:.2f}, needs above {t.match:.2f})"
    if r.chroma is not None and t.harmony_check and r.chroma <= t.chroma:
        return f" (harmony {r.chroma:.2f}, needs above {t.chroma:.2f})"
    return ""


@cli.command()
@library_options
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="Aligned fraction of a track that makes two tracks one recording (default: the code model's calibrated value).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows: group, track_id, path, start_s, end_s.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check each pair the codes align on the two files' audio; --no-verify trusts the codes alone "
              "(no decoding, but an alternate arrangement of a score can join its original).")
@json_option
@quiet_option
@reports_errors
def dedup(library, db_url, threshold, as_csv, verify, as_json, quiet):
    """Groups of files that are the same recording (re-encodes, trims, fades, gain or small speed changes)."""
    from musichash.search.results import dedup_json

    with _open(library, db_url) as lib, _bar(quiet or not verify, as_json or as_csv)(unit="pair", desc="checking pairs on the audio") as bar:
        def step(done, total):
            bar.total = total
            bar.update(done - bar.n)

        groups = lib.dedup(threshold, verify=verify, progress=step)
    if as_json:
        emit(dedup_json(groups))
        return
    if as_csv:
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["group", "track_id", "path", "start_s", "end_s"])
        for g, group in enumerate(groups, 1):
            for m in group.tracks:
                w.writerow([g, m.track_id, m.path, f"{m.span_s[0]:.2f}", f"{m.span_s[1]:.2f}"])
        return
    if not groups:
        click.echo("no duplicates found")
    for g, group in enumerate(groups, 1):
        click.echo(f"group {g} ({len(group.tracks)} files, score {group.score:.2f})")
        for m in group.tracks:
            click.echo(f"  {_shown(m.path)}  [{_clock(m.span_s[0])} - {_clock(m.span_s[1])}]")


def similar_options(f):
    f = click.option("--min-p", type=click.FloatRange(0, 1), default=0.2, show_default=True, help="Probability at which a track has a tag.")(f)
    f = click.option("--exclude-tag", "exclude_tags", multiple=True, help="Leave out tracks with this tag (repeatable).")(f)
    f = click.option("--tag", "tags", multiple=True, help="Only tracks with this tag (repeatable: all of them).")(f)
    return click.option("-k", "--top-k", default=10, show_default=True, type=click.IntRange(1), help="Tracks listed.")(f)


def _print_similar(r) -> None:
    click.echo(f"similar to {_shown(r.seed)}:")
    for i, h in enumerate(r.results, 1):
        click.echo(f"  {i}. {_shown(h.path)}  score {h.score:.2f}  [{_tags_text(h.tags)}]")
    if not r.results:
        click.echo("  (no tracks pass the filters)")
    for p in r.excluded:
        click.echo(f"  left out (same recording): {_shown(p)}")


@cli.command()
@click.argument("seed")
@library_options
@similar_options
@json_option
@device_option
@reports_errors
def similar(seed, library, db_url, top_k, tags, exclude_tags, min_p, as_json, device):
    """Tracks that sound like SEED (a library track's path or id, or any audio file), without its duplicates."""
    from musichash.search.results import similar_json

    with _open(library, db_url, device=device) as lib:
        r = lib.similar(seed, top_k=top_k, tags=tags, exclude_tags=exclude_tags, min_p=min_p)
    if as_json:
        emit(similar_json(r))
    else:
        _print_similar(r)


@cli.command()
@click.option("--seeds", "seeds", multiple=True, help="A seed track (path, id or audio file); repeat for a playlist.")
@click.option("--all", "every", is_flag=True, help="Candidates for every track of the library (needs --out).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="JSON Lines file for --all.")
@library_options
@similar_options
@json_option
@device_option
@quiet_option
@reports_errors
def recommend(seeds, every, out, library, db_url, top_k, tags, exclude_tags, min_p, as_json, device, quiet):
    """Recommendation candidates: tracks near all the --seeds, or (--all --out FILE) for every track."""
    if every == bool(seeds):
        raise click.UsageError("give either --seeds (one or more) or --all with --out FILE")
    if every and out is None:
        raise click.UsageError("--all writes one line per track: give --out FILE")
    from musichash.search.results import similar_json

    filters = {"top_k": top_k, "tags": tags, "exclude_tags": exclude_tags, "min_p": min_p}
    with _open(library, db_url, device=device) as lib:
        if not every:
            r = lib.recommend(list(seeds), **filters)
            if as_json:
                emit(similar_json(r))
            else:
                _print_similar(r)
            return
        n = lib.stats().n_tracks
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f, _bar(quiet, as_json)(total=n, unit="track", desc="recommend") as bar:
            for r in lib.recommend_all(**filters):
                f.write(json.dumps(similar_json(r), ensure_ascii=False) + "\n")
                bar.update(1)
        tmp.replace(out)
    if as_json:
        emit({"out": str(out), "tracks": n})
    else:
        click.echo(f"{out}: candidates for {n} tracks")


@cli.command()
@library_options
@json_option
@reports_errors
def stats(library, db_url, as_json):
    """Size of the library, its code model and index, what its codes cost, and whether codes.h5 looks healthy."""
    from musichash.search.cache import choose_config

    with _open(library, db_url) as lib:
        s = lib.stats(check=True)
        kind = choose_config(lib.folder, s.bits, s.n_segments).kind
        tagger = lib.tagger
    # the metadata only: `musichash check` reads every code
    health = "codes.h5 metadata ok" if not s.problems else f"{len(s.problems)} problems: run `musichash check`"
    row = {
        "library": str(lib.folder), "tracks": s.n_tracks, "errors": s.n_errors, "pending": s.n_pending,
        "segments": s.n_segments, "hours": round(s.hours, 3), "code_model": s.code_model, "bits": s.bits,
        "index_type": kind, "code_bytes": s.code_bytes, "code_bytes_per_hour": round(s.code_bytes_per_hour, 1),
        "segment_hop_frames": lib.store.segment_hop, "shards": lib.store.shards, "tagger": tagger,
        "health": health,
    }
    if s.problems:
        click.echo(f"Warning: {s.problems[0]}" + (f" (and {len(s.problems) - 1} more)" if len(s.problems) > 1 else "")
                   + "; run `musichash check --repair`", err=True)
    if as_json:
        emit({**row, "problems": list(s.problems)})
        return
    width = max(map(len, row))
    for k, v in row.items():
        click.echo(f"{k.replace('_', ' '):<{width}}  {v}")


@cli.command()
@library_options
@click.option("--repair", is_flag=True,
              help="Fix what can be fixed: codes that are damaged or missing are computed again (their tracks "
                   "marked pending, then indexed from their files), and the index cache is rebuilt.")
@json_option
@device_option
@quiet_option
@reports_errors
def check(library, db_url, repair, as_json, device, quiet):
    """Verify the library: its database, that database and folder belong together, every track's codes
    against their checksums, tracks left pending, and the FAISS cache files.

    Prints a summary and exits 0 when all is well; otherwise one line per problem and exit status 1.
    """
    with _open(library, db_url, write=repair, device=device, warn=False) as lib, \
            _bar(quiet, as_json)(unit="track", desc="checking codes") as bar:
        def step(done, total):
            bar.total = total
            bar.update(done - bar.n)
            if done == total:
                bar.reset()

        report = lib.check(repair=repair, progress=step)
    if as_json:
        emit({"library": str(report.folder), "healthy": report.healthy, "tracks": report.tracks,
              "without_checksum": report.unchecked, "pending": report.pending, "index": report.index,
              "problems": [{"where": p.where, "what": p.what, "track_id": p.track_id} for p in report.problems],
              "repaired": list(report.repaired)})
    else:
        for line in report.repaired:
            click.echo(f"repaired: {line}")
        for p in report.problems:
            click.echo(str(p))
        if report.healthy:
            index = {"ok": "index ok", "missing": "index not built yet (the first search builds it)",
                     "stale": "index out of date (the next search rebuilds it)"}[report.index]
            unchecked = f" ({report.unchecked} without checksums yet)" if report.unchecked else ""
            click.echo(f"{report.folder}: healthy: database ok, codes of {report.tracks} tracks verified{unchecked}, {index}")
    if not report.healthy:
        fix = "see above" if repair else "`musichash check --repair` fixes what it can"
        raise click.ClickException(f"{report.folder}: {len(report.problems)} problems; {fix}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@library_options
@json_option
@reports_errors
def remove(paths, library, db_url, as_json):
    """Drop the tracks at PATHS (files, or every track under a folder) from the library; files are not touched."""
    with _open(library, db_url, write=True) as lib:
        gone = lib.remove(paths)
    if as_json:
        emit({"removed": gone})
        return
    for p in gone:
        click.echo(f"removed {_shown(p)}")


@cli.command()
@click.argument("under", required=False, type=click.Path(path_type=Path))
@library_options
@click.option("--status", type=click.Choice(["ok", "error", "pending"]), default=None, help="Only tracks in this state.")
@json_option
@reports_errors
def tracks(under, library, db_url, status, as_json):
    """List the library's tracks (those at or under UNDER, if given): id, state, length and path."""
    with _open(library, db_url) as lib:
        rows = lib.tracks(under, status=status)
    for t in rows:
        if as_json:
            emit({"track_id": t.id, "path": t.path, "status": t.status, "duration_s": t.duration_s,
                  "format": t.format, **({"error": t.error} if t.error else {}),
                  "tags": [{"tag": s.tag, "p": round(s.p, 4)} for s in lib.top_tags(t)]})
            continue
        length = _duration(t.duration_s) if t.duration_s is not None else "-"
        why = f"  ({t.error})" if t.error else ""
        click.echo(f"{t.id:>6}  {t.status:<7}  {length:>7}  {_shown(t.path)}{why}")


@cli.command()
@click.argument("new", type=click.Path(file_okay=False, path_type=Path))
@library_options
@click.option("--shards", type=click.IntRange(1, 1000), required=True, help="Codes files (and segment indexes) of the new library.")
@click.option("--to-db-url", metavar="URL", default=None, help="The new library's metadata database (default: library.db in NEW).")
@json_option
@quiet_option
@reports_errors
def reshard(new, library, db_url, shards, to_db_url, as_json, quiet):
    """Copy the library into NEW with --shards codes files, from its stored codes (no audio decoded, no
    model run); run it again to complete a copy cut short. The old library is not changed."""
    with _open(library, db_url) as lib:
        bar = _bar(quiet, as_json)(total=len(lib.store.tracks()), unit="tracks", desc=f"copying into {new}")
        try:
            report = lib.copy_to(new, shards=shards, db_url=to_db_url, advance=lambda: bar.update(1))
        finally:
            bar.close()
    if as_json:
        emit({"library": str(new), "shards": shards, "copied": report.copied, "errors": report.errors,
              "skipped": report.skipped, "damaged": list(report.damaged)})
        return
    click.echo(f"{new}: {report.copied} tracks copied into {shards} shards, {report.errors} error rows, "
               f"{report.skipped} already there")
    for p in report.damaged:
        click.echo(f"  not copied (damaged codes; `musichash index` its folder into {new}): {_shown(p)}", err=True)


@cli.command()
@library_options
@click.option("--index-type", type=click.Choice(["flat", "hnsw", "ivf", "multihash"]), default=None,
              help="Switch the segment index type (default: keep the current one; a new library is flat up to 1M segments, IVF above).")
@click.option("--nprobe", type=click.IntRange(1), default=None, help="IVF lists probed per query.")
@json_option
@device_option
@reports_errors
def reindex(library, db_url, index_type, nprobe, as_json, device):
    """Rebuild the FAISS index files from the stored codes (they are a cache)."""
    params = {} if nprobe is None else {"nprobe": nprobe}
    with _open(library, db_url, write=True, device=device) as lib:
        idx = lib.reindex(index_type, **params)
    row = {"library": str(lib.folder), "index_type": idx.segments.kind, "segments": idx.segments.ntotal,
           "tracks": idx.tracks.ntotal, "device": idx.segments.device}
    if as_json:
        emit(row)
    else:
        click.echo(f"{lib.folder}: rebuilt {row['index_type']} index of {row['segments']} segments, {row['tracks']} tracks ({row['device']})")


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--layout", type=click.Choice(["auto", "classes", "csv", "manifest"]), default="auto", show_default=True,
              help="auto: a .jsonl file is a manifest, a .csv file a CSV, a folder has class sub-folders.")
@click.option("--bits", "bits", multiple=True, type=click.Choice(["16", "32", "48", "64", "128"]),
              help="Code length of the LSH, ITQ and interim methods (repeatable; default 16, 32 and 64).")
@click.option("--code-model", "code_models", multiple=True,
              help="Also evaluate this code model: a registered name or a CRNNH .safetensors checkpoint (repeatable; default: the default code model).")
@click.option("--windows", type=click.IntRange(1), default=16, show_default=True, help="3 s windows per file, evenly spaced.")
@click.option("--max-minutes", type=click.FloatRange(0.1), default=3.0, show_default=True, help="Minutes decoded of each file.")
@click.option("--k", "ks", multiple=True, type=click.IntRange(1), help="k of precision@k (repeatable; default 10 and 100).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the tie-breaking order, LSH and ITQ.")
@json_option
@device_option
@quiet_option
@reports_errors
def evaluate(data, layout, bits, code_models, windows, max_minutes, ks, seed, as_json, device, quiet):
    """Retrieval quality on labelled DATA: mAP@R, precision@k and within Hamming radius 2, for every method.

    Windows of each file query the windows of all other files; relevant means
    sharing a label. Methods: float backbone features (cosine), LSH and ITQ
    on them, the interim codes, and the --code-model ones.
    """
    from musichash.train.data import guess_layout, load_dataset
    from musichash.train.eval_run import EvalConfig, report_json, report_lines
    from musichash.train.eval_run import evaluate as run
    from musichash.train.evaluate import DEFAULT_K

    dataset = load_dataset(data, guess_layout(data) if layout == "auto" else layout)
    cfg = EvalConfig(bits=tuple(sorted({int(b) for b in bits})) or (16, 32, 64), code_models=code_models,
                     windows=windows, max_minutes=max_minutes, ks=tuple(sorted(set(ks))) or DEFAULT_K, seed=seed)
    with _bar(quiet, as_json)(total=len(dataset.files), unit="file", desc="windows") as bar:
        def step(msg):
            if msg.startswith("skipped") and not (quiet or as_json):
                click.echo(msg, err=True)
            bar.update(1)

        report = run(dataset, cfg, device, progress=step)
    if as_json:
        emit(report_json(report, str(data)))
        return
    for line in report_lines(report, str(data)):
        click.echo(line)


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--layout", type=click.Choice(["unlabelled", "classes", "csv", "manifest"]), default="unlabelled", show_default=True,
              help="unlabelled: a music folder (targets: the tagger's tags); classes: class sub-folders; csv: path + 0/1 tag columns; "
                   "manifest: benchmarks/corpus.py's JSON Lines (labels key=value).")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the checkpoint and the feature cache.")
@click.option("--bits", type=click.Choice(["16", "32", "48", "64", "128"]), default="64", show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--views", type=click.IntRange(1), default=2, show_default=True, help="Augmented views per window in the cache.")
@click.option("--view-kind", type=click.Choice(["random", "identification"]), default="random", show_default=True,
              help="How the cache's views are degraded: random (noise, codecs, EQ, gain, small tempo and pitch changes) "
                   "or identification (the conditions query clips meet: noise down to 0 dB, other music underneath, "
                   "overdrive, phone recordings, pitch +-2 semitones, speed +-3 %%, gain +-12 dB; one view in eight clean).")
@click.option("--jitter", type=click.IntRange(0, 64), default=8, show_default=True,
              help="Up to this many mel frames (16 ms each) between a view's window and its clean window, as a query's "
                   "window sits off the library's (half the library's segment hop covers every offset).")
@click.option("--short-views", type=click.IntRange(0), default=0, show_default=True,
              help="How many of the --views are 2 s clips tiled to a window, as a 2 s query is encoded.")
@click.option("--tune-backbone", is_flag=True,
              help="Also fine-tune a copy of the VGG's blocks 4 and 5 for the codes (segment heads). Tags keep the exact "
                   "musicnn weights and blocks 1-3 are shared; the cache keeps each window's pool3 (about three times larger).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True, help="The head's learning rate.")
@click.option("--tune-lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="The learning rate of the fine-tuned VGG blocks (--tune-backbone).")
@click.option("--init", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start the head from this CRNNH checkpoint (e.g. a shipped musichash/models/weights/crnnh64_segments.safetensors).")
@click.option("--max-minutes", type=click.FloatRange(0.1), default=3.0, show_default=True, help="Minutes used of each file.")
@click.option("--select", type=click.Choice(["learned", "similarity"]), default="learned", show_default=True,
              help="How CRNNH keeps 16 maps per layer: learned channel mixtures, or the channels most like the layer's mean.")
@click.option("--similarity", "lambda_s", type=click.FloatRange(0), default=None,
              help="Weight of the term that makes Hamming neighbours the backbone's neighbours "
                   "(default 20; 0: off; the shipped track heads use 5 with --pull 0 --batches random).")
@click.option("--pull", "lambda_p", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Weight of the term pulling two augmented views of a window together (0: off).")
@click.option("--batches", type=click.Choice(["file-runs", "label-runs", "random"]), default="file-runs", show_default=True,
              help="file-runs: runs of 8 windows of one file per batch, so that codes tell moments of a track apart "
                   "(segment codes); label-runs: the same, with the runs of a batch from files with the same labels "
                   "(hard negatives; needs labels); random: windows drawn at random (track codes).")
@click.option("--classes", type=click.Choice(["labels", "files"]), default="labels", show_default=True,
              help="The classification term's classes: the data's labels (or tags), or one class per file "
                   "(codes that tell tracks with the same labels apart).")
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Feature cache file to build or reuse (default: in --out); one cache serves every --bits.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out (the cache resumes by itself).")
@json_option
@quiet_option
@reports_errors
def train(data, layout, out, bits, epochs, views, view_kind, jitter, short_views, tune_backbone, lr, tune_lr, init, max_minutes, select, lambda_s,
          lambda_p, batches, classes, cache, seed, resume, as_json, quiet):
    """Train a CRNNH code model on DATA; backbone features are cached so epochs need no audio."""
    _need_train_extra()
    from musichash.train.cache import CacheConfig
    from musichash.train.data import load_dataset
    from musichash.train.loop import TrainConfig
    from musichash.train.run import run_training

    if short_views > views:
        raise click.UsageError(f"--short-views {short_views} is more than --views {views}; the short views are some of the views")
    if init is not None:
        from musichash.models.crnnh import load_checkpoint

        try:
            load_checkpoint(init)
        except Exception:
            raise click.UsageError(f"--init {init}: not a CRNNH checkpoint; give a .safetensors written by `musichash train`") from None
    dataset = load_dataset(data, layout)
    if batches == "label-runs" and dataset.targets is None:
        raise click.UsageError("--batches label-runs groups files by their labels; unlabelled data has none "
                               "(give --layout manifest, csv or classes, or use --batches file-runs)")
    say = (lambda msg: None) if (quiet or as_json) else (lambda msg: click.echo(msg, err=True))

    def epoch_done(epoch, rec):
        say(f"epoch {epoch}/{epochs}: loss {rec['total']:.4f} (class {rec['classification']:.4f}, "
            f"quant {rec['quantization']:.4f}, balance {rec['balance']:.4f}, pair {rec['pairwise']:.4f}, "
            f"similarity {rec['similarity']:.4f}) {rec['seconds']:.1f} s"
            + (f"; held out: top-1 {rec['val_top1']:.1%}, {rec['val_flips']:.1%} of bits flipped" if "val_top1" in rec else ""))

    with _bar(quiet, as_json)(total=len(dataset.files), unit="file", desc="features") as bar:
        def file_done(msg):
            if msg.startswith("skipped"):
                say(msg)
            bar.update(1)

        report = run_training(dataset, out, CacheConfig(views=views, max_minutes=max_minutes, seed=seed,
                                                          view_kind=view_kind, jitter=jitter, short_views=short_views,
                                                          tune_backbone=tune_backbone),
                              TrainConfig(bits=int(bits), epochs=epochs, seed=seed, select=select, lambda_p=lambda_p, lr=lr, tune_lr=tune_lr,
                                          per_file=0 if batches == "random" else TrainConfig.per_file,
                                          batch_by="labels" if batches == "label-runs" else "any", classes=classes,
                                          **({} if lambda_s is None else {"lambda_s": lambda_s})),
                              cache=cache, resume=resume, file_done=file_done, epoch_done=epoch_done, init=init)
    if as_json:
        emit({"checkpoint": str(report.checkpoint), "cache": str(report.cache), "windows": report.windows,
              "files": report.files, "metrics": report.metrics})
    else:
        click.echo(f"{report.checkpoint}: CRNNH, {bits} bits, trained on {report.windows} windows of {report.files} files; "
                   f"use it with: musichash index --code-model {report.checkpoint} ...")


def _need_train_extra() -> None:
    """Training degrades audio with pedalboard and scipy, which a plain ``pip install musichash`` leaves out."""
    import importlib.util

    missing = [m for m in ("pedalboard", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        raise MusichashError(f"musichash train needs {' and '.join(missing)}: pip install 'musichash[train]'")


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


# ------------------------------------------------------------------ serve


@cli.command()
@library_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--admin-token", envvar="MUSICHASH_ADMIN_TOKEN", default=None,
              help="Allow writes (POST /index, DELETE /tracks/ID) to requests with Authorization: Bearer TOKEN.")
@click.option("--allow-root", "allow_roots", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A server-side folder POST /index may read (repeatable).")
@click.option("--max-upload-mb", type=click.FloatRange(0.01), default=20.0, show_default=True, help="Largest request body.")
@click.option("--max-clip-s", type=click.FloatRange(1), default=60.0, show_default=True, help="Longest clip, in seconds of audio.")
@click.option("--queue", type=click.IntRange(0), default=32, show_default=True,
              help="Model requests that may wait behind the running one; more are answered 503 with Retry-After.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds after which a model request is answered 504.")
@click.option("--cors-origin", "cors_origins", multiple=True, help="Allow browser calls from this origin (repeatable; default: none).")
@click.option("--cluster", "cluster", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              callback=lambda ctx, p, v: _cluster_address(v),
              help="Serve the segment shards from Ray actors: 'auto' (the cluster `ray start` made here), "
                   "ray://HOST:PORT, or nothing (a new one on this machine) (extra: cluster).")
@device_option
@quiet_option
@reports_errors
def serve(library, db_url, host, port, admin_token, allow_roots, max_upload_mb, max_clip_s, queue, timeout_s,
          cors_origins, cluster, device, quiet):
    """HTTP API and web page over the library (API docs at /docs); needs the serve extra."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise MusichashError(f"musichash serve needs {', '.join(missing)}: pip install 'musichash[serve]'")
    import uvicorn

    from musichash.library import default_folder
    from musichash.service import ServeConfig, create_app

    folder = library if library is not None else default_folder()
    if db_url is None and not (folder / "library.db").exists():
        raise MusichashError(f"{folder}: no library here; index some music first: musichash index PATH... --library {folder}")
    config = ServeConfig(folder, db_url, device, max_upload_mb, max_clip_s, queue=queue, timeout_s=timeout_s,
                         admin_token=admin_token, allow_roots=tuple(allow_roots), cors_origins=tuple(cors_origins),
                         cluster=cluster)
    app = create_app(config)
    if not quiet:
        click.echo(f"serving {folder} on http://{host}:{port}/ (API docs at /docs; Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info")


# --- the seed papers' taggers (issue 25): train-tagger, evaluate-tagger, explain ---------------------------------

_TAGGER_LAYOUTS = ["auto", "mtt", "gtzan", "fma", "classes", "csv", "manifest"]


def tagger_data_options(f):
    f = click.option("--windows", "max_windows", type=click.IntRange(1), default=8, show_default=True,
                     help="3 s windows taken from each file, spread over it.")(f)
    f = click.option("--split", "split_file", type=click.Path(exists=True, path_type=Path), default=None,
                     help="A split to use instead of the data's own or a random one: 'PATH SPLIT' lines, or a folder of "
                          "train*.txt/valid*.txt/test*.txt lists (e.g. GTZAN's artist- or fault-filtered splits).")(f)
    f = click.option("--layout", type=click.Choice(_TAGGER_LAYOUTS), default="auto", show_default=True,
                     help="mtt: annotations_final.csv + mp3 folders; gtzan: genre folders; fma: tracks.csv + fma_small/; "
                          "classes, csv, manifest: as for `musichash train`; auto: guessed from DATA.")(f)
    return f


@cli.command("train-tagger")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--arch", required=True, help="Architecture: fcn3 .. fcn7, crnn_parallel, hpss_cnn, multi_input, "
                                            "multi_input_sum, multi_input_gate.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint (.safetensors; its .json beside it). Default: ARCH.safetensors. Run again to resume.")
@tagger_data_options
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True)
@click.option("--batch", type=click.IntRange(2), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--penalty", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Weight of positive tags in the loss (tags are sparse; > 1 penalises missed tags more).")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
@device_option
@quiet_option
@reports_errors
def train_tagger_cmd(data, arch, out, layout, split_file, max_windows, epochs, batch, lr, penalty, seed, as_json, device, quiet):
    """Train a tagger or genre network on labelled DATA; resumes from --out if it exists."""
    from musichash.devices import torch_device
    from musichash.models.taggers import arch_spec
    from musichash.train.tagger import TaggerTrainConfig
    from musichash.train.tagger_run import run_train

    arch_spec(arch)
    out = out or Path(f"{arch}.safetensors")
    if out.suffix != ".safetensors":
        raise click.UsageError(f"--out {out}: a checkpoint file ends in .safetensors")
    dev = torch_device(device)
    say = (lambda msg: None) if (quiet or as_json) else (lambda msg: click.echo(msg, err=True))
    with _bar(quiet, as_json)(total=None, unit="file", desc="mel windows") as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        report, windows = run_train(
            data, arch, out, TaggerTrainConfig(epochs=epochs, batch=batch, lr=lr, penalty=penalty, seed=seed), layout,
            split_file, max_windows, str(dev), progress,
            on_epoch=lambda r: say(f"epoch {r.epoch}/{epochs}: loss {r.loss:.4f}, valid loss {r.val_loss:.4f}, "
                                   f"valid score {r.val_score:.3f}, lr {r.lr:.0e}, {r.seconds:.1f} s"))
    for failed in windows.failed:
        click.echo(f"Error: {failed} (skipped)", err=True)
    last = report.history[-1] if report.history else None
    if as_json:
        emit({"checkpoint": str(report.checkpoint), "arch": arch, "parameters": report.parameters, "epochs": report.epochs,
              "resumed_from": report.resumed_from, "windows": len(windows.mels), "undecodable": len(windows.failed),
              "history": [r.__dict__ for r in report.history]})
        return
    resumed = f", resumed at epoch {report.resumed_from}" if report.resumed_from else ""
    score = f"; valid score {last.val_score:.3f}" if last is not None else ""
    click.echo(f"{report.checkpoint}: {arch}, {report.parameters:,} parameters, {report.epochs} epochs{resumed}{score}; "
               f"evaluate it with: musichash evaluate-tagger {report.checkpoint} {data}")


@cli.command("evaluate-tagger")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--against", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A second checkpoint: both are scored on the same test files and compared by a paired bootstrap.")
@tagger_data_options
@click.option("--resamples", type=click.IntRange(10), default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", type=int, default=None, help="Seed of a random split (default: the checkpoint's training seed).")
@json_option
@device_option
@quiet_option
@reports_errors
def evaluate_tagger_cmd(checkpoint, data, against, layout, split_file, max_windows, resamples, seed, as_json, device, quiet):
    """Score a trained tagger on the test files of DATA: ROC-AUC and PR-AUC per tag, or accuracy and confusion."""
    from musichash.devices import torch_device
    from musichash.train.tagger_run import run_evaluate

    with _bar(quiet, as_json)(total=None, unit="file", desc="mel windows") as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        ev = run_evaluate(checkpoint, data, layout, split_file, against, seed, max_windows, resamples,
                          str(torch_device(device)), progress)
    for failed in ev.failed:
        click.echo(f"Error: {failed} (skipped)", err=True)
    if as_json:
        emit(ev.to_dict())
        return
    s = ev.scores
    if s.multilabel:
        click.echo(f"{checkpoint}: {s.n_files} test files, macro ROC-AUC {s.macro_roc_auc:.4f}, macro PR-AUC {s.macro_pr_auc:.4f}")
        width = max(len(n) for n in s.names)
        for n, a, p in zip(s.names, s.roc_auc, s.pr_auc):
            click.echo(f"  {n:<{width}}  ROC-AUC {a:.4f}  PR-AUC {p:.4f}")
        if s.undefined:
            click.echo(f"  no score (all or none of the files have it): {', '.join(s.undefined)}")
    else:
        click.echo(f"{checkpoint}: {s.n_files} test files, accuracy {s.accuracy:.4f}")
        width = max(len(n) for n in s.names)
        corner = "true \\ guessed"
        width = max(width, len(corner))
        click.echo(f"  {corner:<{width}}  " + " ".join(f"{n[:6]:>6}" for n in s.names))
        for n, row in zip(s.names, s.confusion):
            click.echo(f"  {n:<{width}}  " + " ".join(f"{v:>6}" for v in row))
    if ev.comparison is not None:
        c = ev.comparison
        click.echo(f"{c.metric}: {c.a:.4f} vs {c.b:.4f} ({against}): difference {c.diff:+.4f}, "
                   f"95 % interval [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p = {c.p:.3f} (paired bootstrap, {c.resamples} resamples)")


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--tag", default=None, help="The tag or class whose evidence is shown (with --model).")
@click.option("--model", "checkpoint", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="A checkpoint of `musichash train-tagger`, or a shipped one: fcn4_rendered, crnn_parallel_rendered, ...")
@click.option("--match", "clip", default=None, type=click.Path(path_type=Path),
              help="A clip the library finds in FILE: show the evidence of the segments that matched it (with --library).")
@library_options
@click.option("--method", type=click.Choice(["gradcam", "occlusion", "both"]), default="both", show_default=True)
@click.option("--seconds", type=click.FloatRange(1), default=30.0, show_default=True, help="Seconds of FILE explained, from --start.")
@click.option("--start", type=click.FloatRange(0), default=None,
              help="Where the explained part of FILE starts, in seconds (default: 0; with --match, centred on the match).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG heatmap over the spectrogram (default: FILE's name + .explain.png; none with --json unless given).")
@json_option
@device_option
@reports_errors
def explain(file, tag, checkpoint, clip, library, db_url, method, seconds, start, out, as_json, device):
    """Show which parts of FILE's mel spectrogram made a tagger say --tag, or made the library find
    the --match clip in FILE (Grad-CAM and occlusion)."""
    from musichash.devices import torch_device
    from musichash.features.audio import load_audio, log_mel
    from musichash.models.explain import METHODS, explain as run_explain, tag_target
    from musichash.models.taggers import load_tagger

    if (tag is None) == (clip is None):
        raise click.UsageError("give --tag TAG --model CHECKPOINT (a tagger's evidence) or --match CLIP --library DIR "
                               "(why the library finds CLIP in FILE), one of the two")
    if tag is not None and checkpoint is None:
        raise click.UsageError("--tag needs --model: a checkpoint of `musichash train-tagger` or a shipped one (fcn4_rendered, ...)")
    methods = METHODS if method == "both" else (method,)
    if clip is not None:
        return _explain_match(file, clip, library, db_url, methods, seconds, start, out, as_json, device)
    start = start or 0.0
    dev = torch_device(device)
    ckpt = load_tagger(checkpoint, dev)
    if tag not in ckpt.names:
        raise click.UsageError(f"--tag {tag!r}: {checkpoint} knows {', '.join(ckpt.names)}")
    mel = log_mel(load_audio(file, offset_s=start, duration_s=seconds), dev)
    e = run_explain(ckpt.model, mel, tag_target(ckpt.names.index(tag), ckpt.multilabel), tag, methods, dev)
    out = _explain_png(e, file, out, as_json, f"{file.name}: evidence for '{tag}' ({checkpoint.name})", start)
    if as_json:
        emit({"path": str(file), "tag": tag, "model": str(checkpoint), "start_s": start, "png": None if out is None else str(out),
              "provenance": ckpt.meta.get("provenance", {}), **e.to_dict()})
        return
    click.echo(f"{out}: {', '.join(e.maps)} for '{tag}' over {len(mel) * e.seconds_per_frame:.1f} s of {file}")


def _explain_png(e, file: Path, out: Path | None, as_json: bool, title: str, start_s: float) -> Path | None:
    from musichash.models.explain import save_png

    if out is None and not as_json:
        out = file.with_name(file.name + ".explain.png")
    if out is not None:
        try:
            save_png(e, out, title, start_s)
        except ImportError:
            raise MusichashError("the PNG needs matplotlib: pip install 'musichash[explain]' (or use --json)") from None
    return out


def _explain_match(file, clip, library, db_url, methods, seconds, start, out, as_json, device):
    from musichash.search.explain_match import explain_match

    with _open(library, db_url, device=device) as lib:
        m = explain_match(lib, file, clip, seconds=seconds, start_s=start, methods=methods)
    e = m.explanation
    out = _explain_png(e, file, out, as_json, f"{file.name}: why {clip.name} matched at {_clock(m.offset_s)} "
                                              f"(score {m.score:.2f}, {lib.code_model})", m.start_s)
    if as_json:
        emit({**m.to_dict(), "library": str(lib.folder), "code_model": lib.code_model,
              "png": None if out is None else str(out)})
        return
    explained = sum(1 for s in e.window_scores if not math.isnan(s))
    click.echo(f"{out}: {', '.join(e.maps)} for the match of {clip} at {_clock(m.offset_s)} (score {m.score:.2f}) over "
               f"{len(e.mel) * e.seconds_per_frame:.1f} s of {file} from {_clock(m.start_s)}; {explained} of "
               f"{len(e.window_scores)} windows aligned with the clip")
