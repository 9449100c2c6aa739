"""Fault injection at the edges a user meets: bad and odd input files, folders the scan cannot enter,
clips too short or too long, names that would break the text output, and a fuzzed decoder front end.
Every scenario ends in an exact one-line message and exit status, the batch goes on, and nothing is
indexed half-way. (kill -9 during indexing: test_crash.py; damaged library files: test_integrity.py.)"""

import io
import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from synth import SR, make_song, write_song

from musichash.cli import cli
from musichash.features.audio import AudioError, load_audio
from musichash.library import Library

MODEL = "unittest_hash"
TOO_SHORT = "queries need at least 2 s"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ffmpeg(src, dst, *args):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)], check=True)


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg to write MP3 and Ogg files")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Three songs indexed; a folder of odd clips beside them."""
    root = tmp_path_factory.mktemp("faults")
    music = root / "music"
    music.mkdir()
    for i in range(3):
        write_song(music / f"song{i}.wav", seed=i, seconds=14)
    lib = root / "lib"
    assert run("index", music, "--library", lib, "--code-model", MODEL, "--workers", "0").exit_code == 0
    return root, music, lib


def test_a_folder_without_audio_is_an_error(library, tmp_path):
    _, _, lib = library
    (tmp_path / "notes.txt").write_text("no audio here")
    r = run("search", tmp_path, "--library", lib)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith(f"Error: {tmp_path}: no audio files found (searched for: .aac, ")


def test_one_bad_clip_does_not_stop_the_batch(library, tmp_path):
    root, music, lib = library
    (tmp_path / "text.mp3").write_text("not audio at all, only text")
    clip = tmp_path / "clip.wav"
    sf.write(clip, sf.read(music / "song1.wav", dtype="float32")[0][2 * SR : 9 * SR], SR)
    r = run("search", tmp_path / "text.mp3", tmp_path / "gone.wav", clip, "--library", lib)
    assert r.exit_code == 1
    assert r.stdout.startswith(f"{clip}  (7.0 s): ")
    assert r.stderr.splitlines() == [
        f"Error: {tmp_path / 'gone.wav'}: no such file or folder; check the path",
        f"Error: {tmp_path / 'text.mp3'}: not an audio file that soundfile or ffmpeg can read; "
        "convert it to wav or flac, e.g. ffmpeg -i IN OUT.flac",
        "Error: 2 of 3 clips could not be searched",
    ]


def test_short_clips_get_one_message(library, tmp_path):
    _, _, lib = library
    sf.write(tmp_path / "half.wav", make_song(9, 0.5), SR)  # below what the decoder accepts at all
    sf.write(tmp_path / "two.wav", make_song(9, 1.5), SR)  # decodes, too short to search
    r = run("search", tmp_path / "half.wav", tmp_path / "two.wav", "--library", lib)
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        f"Error: {tmp_path / 'half.wav'}: clip is 0.5 s long; {TOO_SHORT}",
        f"Error: {tmp_path / 'two.wav'}: clip is 1.5 s long; {TOO_SHORT}",
        "Error: 2 of 2 clips could not be searched",
    ]


def test_a_long_query_is_searched_by_its_first_minute(library, tmp_path):
    _, music, lib = library
    song = sf.read(music / "song2.wav", dtype="float32")[0]
    sf.write(tmp_path / "long.wav", np.tile(song, 6), SR)  # 84 s
    r = run("search", tmp_path / "long.wav", "--library", lib, "--json")
    assert r.exit_code == 0
    assert r.stderr == f"Note: {tmp_path / 'long.wav'}: longer than 60 s: only its first 60 s were searched\n"
    assert '"duration_s"' not in r.stdout and '"note": "longer than 60 s: only its first 60 s were searched"' in r.stdout
    with Library.open(lib) as lb:
        [res] = lb.search([tmp_path / "long.wav"])
        assert res.duration_s == pytest.approx(60, abs=0.1) and res.results[0].path.endswith("song2.wav")


def test_a_newline_in_a_file_name_stays_on_one_line(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    odd = music / "two\nlines.wav"
    write_song(odd, seed=4, seconds=10)
    lib = tmp_path / "lib"
    r = run("index", music, "--library", lib, "--code-model", MODEL, "--workers", "0")
    assert r.exit_code == 0
    clip = tmp_path / "clip.wav"
    sf.write(clip, sf.read(odd, dtype="float32")[0][SR : 8 * SR], SR)
    r = run("search", clip, "--library", lib)
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and len(lines) == 2 and f"{music}/two\\nlines.wav  at " in lines[1]
    r = run("tracks", "--library", lib)
    assert r.stdout.splitlines() == [f"     1  ok          0:10  {music}/two\\nlines.wav"]


def test_tracks_lists_the_library(library):
    _, music, lib = library
    r = run("tracks", music / "song1.wav", "--library", lib, "--json")
    assert r.exit_code == 0
    row = json.loads(r.stdout)
    assert len(row.pop("tags")) == 5  # the track's top tags (issue 25: of the library's tagger when it has one)
    assert row == {"track_id": 2, "path": str(music / "song1.wav"), "status": "ok", "duration_s": 14.0, "format": "wav"}
    assert len(run("tracks", "--library", lib).stdout.splitlines()) == 3
    r = run("remove", music / "nope.wav", "--library", lib)
    assert r.exit_code == 1 and r.stderr.endswith("no track of the library is at or under this path; see `musichash tracks`\n")


def test_linked_folders_are_named_not_followed(tmp_path):
    music = tmp_path / "music"
    (music / "real").mkdir(parents=True)
    write_song(music / "real" / "a.wav", seed=1, seconds=10)
    os.symlink(music / "real", music / "link")
    os.symlink(music, music / "real" / "loop")  # a loop back up
    r = run("index", music, "--library", tmp_path / "lib", "--code-model", MODEL, "--workers", "0")
    assert r.exit_code == 0 and ": 1 added, " in r.stdout and " 2 failed " in r.stdout
    assert r.stderr.splitlines() == [
        f"  skipped: {music / 'link'}: a link to a folder, not followed; give its target ({music / 'real'}) itself",
        f"  skipped: {music / 'real' / 'loop'}: a link to a folder, not followed; give its target ({music}) itself",
    ]


def as_nobody(task):
    """``task(base)`` lays out files in ``base``, a folder of /tmp that nobody may enter (pytest's own
    are root's alone), and returns a function; that runs in a forked child that is 'nobody' when the
    tests run as root (root reads every file and folder), and its JSON-able result comes back."""
    import json
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="musichash-faults-"))
    os.chmod(base, 0o755)
    prepare = task(base)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, report, and leave without running pytest's teardown
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            os.write(write, json.dumps(prepare()).encode())
        except BaseException as e:
            os.write(write, json.dumps(f"child failed: {e!r}").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        said = json.loads(f.read() or "null")
    os.waitpid(pid, 0)
    for root, dirs, _ in os.walk(base):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(base)
    return said


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="drops privileges in a forked child")


@needs_fork
def test_an_unreadable_folder_is_named():
    """A folder the scan cannot open is reported, not skipped without a word."""
    from musichash.indexer.pipeline import scan

    def task(base):
        music = base / "music"
        (music / "locked").mkdir(parents=True)
        write_song(music / "a.wav", seed=1, seconds=5)
        write_song(music / "locked" / "b.wav", seed=2, seconds=5)
        os.chmod(music, 0o755)
        os.chmod(music / "locked", 0o000)

        def scanned():
            files, skipped = scan([music])
            return [[p.name for p in files], [[x.path, x.reason] for x in skipped]], str(music / "locked")
        return scanned

    (files, skipped), locked = as_nobody(task)
    assert files == ["a.wav"]
    assert skipped == [[locked, "cannot read this folder (Permission denied); its files were skipped"]]


@needs_fork
def test_an_unreadable_file_is_one_error():
    """A file the user may not read is its own one-line error."""
    def task(base):
        locked = base / "locked.wav"
        write_song(locked, seed=1, seconds=5)
        os.chmod(locked, 0o000)

        def decoded():
            try:
                load_audio(locked)
                return "read", str(locked)
            except AudioError as e:
                return str(e), str(locked)
        return decoded

    said, locked = as_nobody(task)
    assert said == f"{locked}: cannot read (permission denied); check the file's permissions"


@needs_ffmpeg
@pytest.mark.parametrize("ext, args", [("mp3", ["-b:a", "128k"]), ("ogg", ["-c:a", "libvorbis"])])
def test_truncated_files_are_refused_whole(tmp_path, ext, args):
    wav = tmp_path / "song.wav"
    write_song(wav, seed=3, seconds=20)
    full = tmp_path / f"full.{ext}"
    ffmpeg(wav, full, *args)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    assert len(load_audio(full)) == pytest.approx(20 * SR, rel=0.01)
    with pytest.raises(AudioError, match=r"truncated: .*; re-download or re-encode it$"):
        load_audio(cut)
    music = tmp_path / "music"
    music.mkdir()
    shutil.move(cut, music / cut.name)
    r = run("index", music, "--library", tmp_path / "lib", "--code-model", MODEL, "--workers", "0")
    assert r.exit_code == 0 and ": 0 added, " in r.stdout and " 1 failed " in r.stdout
    assert f"  skipped: {music / cut.name}: truncated: " in r.stderr


@needs_ffmpeg
def test_decoder_notes_name_their_file(tmp_path, capfd):
    """libmpg123 writes its notes on damaged MP3 frames straight to stderr; they come back with the file's name."""
    wav = tmp_path / "song.wav"
    write_song(wav, seed=3, seconds=10)
    ffmpeg(wav, tmp_path / "a.mp3", "-b:a", "128k")
    data = (tmp_path / "a.mp3").read_bytes()
    (tmp_path / "b.mp3").write_bytes(data[: len(data) // 2])  # its Xing header now overstates the stream
    capfd.readouterr()
    with pytest.raises(AudioError, match="truncated"):
        load_audio(tmp_path / "b.mp3")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith(f"Warning: {tmp_path / 'b.mp3'}: decoder: ") for line in lines)


# --------------------------------------------------------------------------------- decoder fuzz

def _seed_files(tmp_path) -> dict[str, bytes]:
    y = make_song(5, 4.0)
    out = {}
    for fmt in ("wav", "flac", "ogg"):
        buf = io.BytesIO()
        sf.write(buf, y, SR, format=fmt.upper(), **({"subtype": "VORBIS"} if fmt == "ogg" else {}))
        out[fmt] = buf.getvalue()
    if shutil.which("ffmpeg"):
        sf.write(tmp_path / "s.wav", y, SR)
        ffmpeg(tmp_path / "s.wav", tmp_path / "s.mp3", "-b:a", "64k")
        out["mp3"] = (tmp_path / "s.mp3").read_bytes()
    return out


def test_decoder_fuzz_raises_only_typed_errors(tmp_path):
    """Random bytes, and real WAV / FLAC / Ogg / MP3 files with bytes flipped, cut or spliced (seeded,
    bounded): load_audio returns audio or raises AudioError, never anything else, and never hangs."""
    rng = np.random.default_rng(1234)
    seeds = _seed_files(tmp_path)
    cases = [(f"random{i}.{ext}", rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
             for i, ext in enumerate(["wav", "mp3", "ogg", "flac", "bin"] * 2)]
    for fmt, data in seeds.items():
        for i in range(8):
            b = bytearray(data)
            kind = i % 4
            if kind == 0:  # flip bytes in the header
                for at in rng.integers(0, min(64, len(b)), 4):
                    b[at] ^= int(rng.integers(1, 256))
            elif kind == 1:  # flip bytes anywhere
                for at in rng.integers(0, len(b), 16):
                    b[at] ^= int(rng.integers(1, 256))
            elif kind == 2:  # cut anywhere
                b = b[: int(rng.integers(1, len(b)))]
            else:  # a header glued to another format's body
                other = seeds[list(seeds)[int(rng.integers(len(seeds)))]]
                b = b[:44] + bytearray(other[44:])
            cases.append((f"mut{i}.{fmt}", bytes(b)))
    outcomes = {"audio": 0, "error": 0}
    t0 = time.monotonic()
    for name, data in cases:
        path = tmp_path / name
        path.write_bytes(data)
        try:
            y = load_audio(path)
            assert y.dtype == np.float32 and np.isfinite(y).all()
            outcomes["audio"] += 1
        except AudioError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
            outcomes["error"] += 1
    assert time.monotonic() - t0 < 120
    assert outcomes["error"] >= 10 and sum(outcomes.values()) == len(cases)
