"""The ``musichash`` command line: a thin shell over the library.

Library code raises :class:`~musichash.errors.MusichashError` subclasses; only
this module turns them into one-line ``Error: ...`` messages and exit codes.
"""

from __future__ import annotations

import functools
import json
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
        help="Where the model runs: auto (CUDA GPU if usable, else CPU), cpu, cuda, cuda:N.",
    )(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(f)


def model_option(default: str):
    return click.option("--model", default=default, show_default=True, help="Registered model name (see `musichash models`).")


def reports_errors(f):
    """Turn library errors into ``Error: ...`` on stderr and exit status 1, without a traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
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

    from musichash.audio import AudioError, audio_info
    from musichash.tagging import Tagger

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
    from musichash.models import DEFAULT_TAGGER, REGISTRY

    rows = [
        {"name": s.name, "kind": s.kind, "bits": s.bits, "default": s.name == DEFAULT_TAGGER, "description": s.description}
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
        click.echo(f"{mark} {r['name']:<{width}}  {r['kind']:<7} {bits:>4}  {r['description']}")


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


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
