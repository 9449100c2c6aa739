"""The engine through its Python API, with the tiny random code model (mechanics, not accuracy)."""

import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from synth import SR, make_song, write_song

from musichash.indexer.store import ModelMismatchError
from musichash.library import Clip, Library, QueryError
from musichash.models.encoder import FRAME_S, LIBRARY_HOP
from musichash.search.cache import INDEX_DIR

MODEL = "unittest_hash"


@pytest.fixture
def music(tmp_path):
    d = tmp_path / "music"
    (d / "sub").mkdir(parents=True)
    for i in range(3):
        write_song(d / f"song{i}.wav", seed=i, seconds=12)
    write_song(d / "sub" / "song3.flac", seed=3, seconds=12)
    (d / "notes.txt").write_text("not audio, and not scanned")
    return d


@pytest.fixture
def lib_dir(tmp_path):
    return tmp_path / "lib"


def index(lib_dir, *paths, **kw):
    with Library.open(lib_dir, write=True, code_model=MODEL) as lib:
        return lib.index(list(paths), workers=0, **kw)


def test_index_records_tracks_tags_and_segments(music, lib_dir):
    report = index(lib_dir, music)
    assert len(report.added) == 4 and not report.failed
    assert report.audio_s == pytest.approx(48, abs=0.1)
    with Library.open(lib_dir) as lib:
        tracks = lib.store.tracks("ok")
        assert sorted(os.path.basename(t.path) for t in tracks) == ["song0.wav", "song1.wav", "song2.wav", "song3.flac"]
        t = tracks[0]
        assert t.duration_s == pytest.approx(12, abs=0.02)
        assert t.format in ("wav", "flac") and len(t.tags) == 50
        codes = lib.store.get_codes(t.id)
        # segments every LIBRARY_HOP frames (a last one may end with the track), 2 bytes each for 16 bits
        gaps = np.diff(codes.segment_times)
        assert np.allclose(gaps[:-1], LIBRARY_HOP * FRAME_S) and 0 < gaps[-1] <= LIBRARY_HOP * FRAME_S + 1e-6
        assert codes.segment_codes.shape == (t.n_segments, 2)
        assert lib.stats().n_tracks == 4


def test_incremental_runs(music, lib_dir):
    index(lib_dir, music)
    again = index(lib_dir, music)
    assert again.unchanged == 4 and not again.added and not again.updated and again.audio_s == 0

    write_song(music / "song1.wav", seed=11, seconds=12)  # new content, same path
    shutil.move(music / "song2.wav", music / "sub" / "renamed.wav")
    shutil.copy(music / "song0.wav", music / "copy_of_0.wav")
    (music / "broken.mp3").write_bytes(b"\xff\xfb" + bytes(200))
    report = index(lib_dir, music)
    assert [os.path.basename(p) for p in report.updated] == ["song1.wav"]
    assert [(os.path.basename(a), os.path.basename(b)) for a, b in report.moved] == [("song2.wav", "renamed.wav")]
    assert [(os.path.basename(a), os.path.basename(b)) for a, b in report.copies] == [("copy_of_0.wav", "song0.wav")]
    assert [os.path.basename(f.path) for f in report.failed] == ["broken.mp3"]
    assert report.unchanged == 2  # song0, song3
    with Library.open(lib_dir) as lib:
        by_name = {os.path.basename(t.path): t for t in lib.store.tracks()}
        assert by_name["broken.mp3"].status == "error"
        copy, orig = by_name["copy_of_0.wav"], by_name["song0.wav"]
        assert np.array_equal(lib.store.get_codes(copy.id).segment_codes, lib.store.get_codes(orig.id).segment_codes)

    # an unchanged bad file is listed again, not retried; --prune drops vanished files
    os.remove(music / "song3.flac" if (music / "song3.flac").exists() else music / "sub" / "song3.flac")
    report = index(lib_dir, music, prune=True)
    assert [os.path.basename(f.path) for f in report.failed] == ["broken.mp3"]
    assert [os.path.basename(p) for p in report.pruned] == ["song3.flac"]


def test_bad_and_missing_paths_do_not_abort(music, lib_dir, tmp_path):
    (music / "empty.wav").write_bytes(b"")
    report = index(lib_dir, music, tmp_path / "nope")
    reasons = {os.path.basename(f.path): f.reason for f in report.failed}
    assert set(reasons) == {"empty.wav", "nope"}
    assert "no such file" in reasons["nope"]
    assert len(report.added) == 4


def test_workers_give_the_same_codes(music, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    index(a, music)
    with Library.open(b, write=True, code_model=MODEL) as lib:
        lib.index([music], workers=1)
    with Library.open(a) as la, Library.open(b) as lb:
        ca = {t.path: la.store.get_codes(t.id) for t in la.store.tracks()}
        cb = {t.path: lb.store.get_codes(t.id) for t in lb.store.tracks()}
        assert ca.keys() == cb.keys()
        for p in ca:
            assert np.array_equal(ca[p].segment_codes, cb[p].segment_codes)
            assert np.array_equal(ca[p].track_code, cb[p].track_code)


def test_search_finds_a_track_by_its_own_audio(music, lib_dir):
    index(lib_dir, music)
    with Library.open(lib_dir) as lib:
        [r] = lib.search([music / "song1.wav"], top_k=3)
        assert r.error is None and r.match
        top = r.results[0]
        assert os.path.basename(top.path) == "song1.wav"
        assert top.hamming == 0 and abs(top.offset_s) < 0.2
        assert len(top.tags) == 5 and all(0 <= t.p <= 1 for t in top.tags)


def test_query_windows_are_half_as_dense_from_8_s(music, lib_dir, tmp_path):
    """Short clips keep windows every 0.256 s; from 8 s on every 0.512 s, the same windows' codes."""
    from musichash.models.encoder import LONG_QUERY_HOP, QUERY_HOP, query_hop

    assert (query_hop(3.0), query_hop(7.99), query_hop(8.0), query_hop(600.0)) == (16, 16, 32, 32)
    index(lib_dir, music)
    song = make_song(7, seconds=12)
    with Library.open(lib_dir) as lib:
        for seconds, hop in ((5, QUERY_HOP), (10, LONG_QUERY_HOP)):
            wave = song[: seconds * SR]
            sf.write(tmp_path / f"clip{seconds}.wav", wave, SR)
            from_file = lib.encode(tmp_path / f"clip{seconds}.wav", track=False, harmony=True)
            in_memory = lib.encode(Clip("clip", wave), track=False, harmony=True)
            gaps = np.diff(from_file.times)  # the last window ends with the clip
            assert np.allclose(gaps[:-1], hop * FRAME_S) and 0 < gaps[-1] <= hop * FRAME_S + 1e-6
            assert np.array_equal(from_file.times, in_memory.times)  # the file's streamed mel may differ in rounding
            # the same windows as a dense encoding's at those starts
            dense = lib.encode(tmp_path / f"clip{seconds}.wav", QUERY_HOP, track=False)
            at = np.searchsorted(dense.times, from_file.times)
            assert np.array_equal(dense.times[at], from_file.times) and np.array_equal(dense.codes[at], from_file.codes)
            assert len(dense.times) > len(from_file.times) if hop > QUERY_HOP else len(dense.times) == len(from_file.times)


def test_result_tags_read_the_vocabulary_once(music, lib_dir, monkeypatch):
    """Tags on every result: the tag list (and a checkpoint's spec) is read from files once per library, not per tag."""
    import musichash.library as library

    index(lib_dir, music)
    calls = []
    real = library.tag_names
    monkeypatch.setattr(library, "tag_names", lambda v: calls.append(v) or real(v))
    with Library.open(lib_dir) as lib:
        results = list(lib.search([music / "song1.wav", music / "song2.wav"], top_k=4))
    assert sum(len(h.tags) for r in results for h in r.results) >= 10 and len(calls) == 1


def test_top_k_does_not_narrow_the_harmony_reranking(music, lib_dir, monkeypatch):
    from musichash.search import query
    from musichash.search.query import HARMONY_CANDIDATES

    index(lib_dir, music)
    seen = []
    verify = query.verify
    monkeypatch.setattr(query, "verify", lambda enc, votes, chroma_of: seen.append(len(votes)) or verify(enc, votes, chroma_of))
    with Library.open(lib_dir) as lib:
        [one] = lib.search([music / "song1.wav"], top_k=1)
        [five] = lib.search([music / "song1.wav"], top_k=5)
    assert seen[0] >= HARMONY_CANDIDATES and len(one.results) == 1
    assert (one.results[0], one.chroma, one.match) == (five.results[0], five.chroma, five.match)


def test_search_reports_unusable_clips(music, lib_dir, tmp_path):
    index(lib_dir, music)
    short = make_song(1, seconds=1.5)
    with Library.open(lib_dir) as lib:
        res = list(lib.search([Clip("short", short), tmp_path / "missing.wav"]))
    assert res[0].error == "clip is 1.5 s long; queries need at least 2 s"
    assert not res[0].match and res[0].results == ()
    assert "not found" in res[1].error or "no such" in res[1].error


def test_index_cache_is_rebuilt_when_stale(music, lib_dir):
    index(lib_dir, music / "song0.wav")
    with Library.open(lib_dir) as lib:
        first = lib.search_index()
        assert first.rebuilt and (lib_dir / INDEX_DIR / "segments.faiss").is_file()
        built_codes = np.array(first.seg_codes)
    with Library.open(lib_dir) as lib:
        loaded = lib.search_index()
        assert not loaded.rebuilt  # loaded from index/
        assert isinstance(loaded.seg_codes, np.memmap) and np.array_equal(loaded.seg_codes, built_codes)
    (lib_dir / INDEX_DIR / "segment_codes.npy").unlink()  # a cache of an older musichash
    with Library.open(lib_dir) as lib:
        assert lib.search_index().rebuilt
    index(lib_dir, music)
    with Library.open(lib_dir) as lib:
        again = lib.search_index()
        assert again.rebuilt and again.tracks.ntotal == 4
        assert again.segments.ntotal == sum(t.n_segments for t in lib.store.tracks("ok"))


def test_reindex_switches_index_type(music, lib_dir):
    index(lib_dir, music)
    with Library.open(lib_dir, write=True) as lib:
        idx = lib.reindex("hnsw")
        assert idx.segments.kind == "hnsw"
    with Library.open(lib_dir) as lib:
        assert lib.search_index().segments.kind == "hnsw"
        [r] = lib.search([music / "song2.wav"])
        assert os.path.basename(r.results[0].path) == "song2.wav"


def test_track_codes_go_to_ivf_in_large_libraries(music, lib_dir, monkeypatch):
    from musichash.search import cache

    index(lib_dir, music)
    with Library.open(lib_dir) as lib:
        assert lib.search_index().tracks.kind == "flat"
    monkeypatch.setattr(cache, "AUTO_IVF_TRACKS", 4)  # a "large" library of 4 tracks
    monkeypatch.setattr(cache, "_MIN_IVF_SEGMENTS", 4)
    with Library.open(lib_dir, write=True) as lib:
        idx = lib.search_index()  # the saved index no longer fits the settings: rebuilt
        assert idx.rebuilt and idx.tracks.kind == "ivf" and idx.tracks.config.nprobe == cache.TRACK_NPROBE
        assert sorted(os.path.basename(h.path) for h in lib.similar(str(music / "song0.wav")).results) == [
            "song1.wav", "song2.wav", "song3.flac"]
        assert lib.reindex("flat").tracks.kind == "flat"  # a library that chose flat keeps exact track search


def test_library_refuses_another_code_model(music, lib_dir):
    index(lib_dir, music / "song0.wav")
    with pytest.raises(ModelMismatchError, match="unittest_hash"):
        Library.open(lib_dir, write=True, code_model="interim_vgg_itq64")


def test_remove_by_file_and_folder(music, lib_dir):
    index(lib_dir, music)
    with Library.open(lib_dir, write=True) as lib:
        assert [os.path.basename(p) for p in lib.remove([music / "sub"])] == ["song3.flac"]
        assert [os.path.basename(p) for p in lib.remove([music / "song0.wav"])] == ["song0.wav"]
        with pytest.raises(QueryError, match="no track of the library"):
            lib.remove([music / "song0.wav"])
        assert lib.stats().n_tracks == 2


def test_dedup_groups_exact_copies(music, lib_dir):
    shutil.copy(music / "song0.wav", music / "dup.wav")
    index(lib_dir, music)
    with Library.open(lib_dir) as lib:
        groups = lib.dedup(threshold=1.01)  # only the byte-identical pair can pass
    assert len(groups) == 1
    assert sorted(os.path.basename(m.path) for m in groups[0].tracks) == ["dup.wav", "song0.wav"]
    assert all(m.span_s == (0.0, pytest.approx(12, abs=0.02)) for m in groups[0].tracks)


def test_similar_leaves_out_seed_and_its_copies(music, lib_dir):
    shutil.copy(music / "song0.wav", music / "dup.wav")
    index(lib_dir, music)
    with Library.open(lib_dir) as lib:
        r = lib.similar(str(music / "song0.wav"), top_k=10)
        names = [os.path.basename(h.path) for h in r.results]
        assert "song0.wav" not in names and "dup.wav" not in names
        assert sorted(names) == ["song1.wav", "song2.wav", "song3.flac"]
        assert [h.score for h in r.results] == sorted((h.score for h in r.results), reverse=True)
        assert [os.path.basename(p) for p in r.excluded] == ["dup.wav"]
        # a file outside the library works as a seed too
        outside = music.parent / "outside.wav"
        sf.write(outside, make_song(7, 8), SR)
        assert len(lib.similar(str(outside), top_k=2).results) == 2


def test_tag_filters(music, lib_dir):
    index(lib_dir, music)
    with Library.open(lib_dir) as lib:
        seed = str(music / "song0.wav")
        tags = {t.id: t.tags for t in lib.store.tracks()}
        rock = lib.vocabulary.index("rock")
        for min_p in (0.0, 1.01):
            kept = lib.similar(seed, tags=["rock"], min_p=min_p).results
            assert all(tags[h.track_id][rock] >= min_p for h in kept)
            assert len(kept) == (3 if min_p == 0 else 0)
        assert lib.similar(seed, exclude_tags=["rock"], min_p=0.0).results == ()
        with pytest.raises(QueryError, match="unknown tag 'polka'"):
            lib.similar(seed, tags=["polka"])


def test_recommend_from_several_seeds(music, lib_dir):
    index(lib_dir, music)
    with Library.open(lib_dir) as lib:
        seeds = [str(music / "song0.wav"), str(music / "song1.wav")]
        r = lib.recommend(seeds, top_k=5)
        assert sorted(os.path.basename(h.path) for h in r.results) == ["song2.wav", "song3.flac"]
        rows = list(lib.recommend_all(top_k=2))
        assert len(rows) == 4 and all(len(x.results) == 2 for x in rows)
        with pytest.raises(QueryError, match="no track with id 99"):
            lib.recommend([99])


def test_crnnh_plugs_in_by_model_name(music, tmp_path):
    """The same engine runs on CRNNH codes: only the registered code model's name changes."""
    with Library.open(tmp_path / "crnnh", write=True, code_model="unittest_crnnh") as lib:
        report = lib.index([music], workers=0)
        assert len(report.added) == 4
        assert lib.stats().bits == 32
        track = lib.store.find_by_path(str(music / "song2.wav"))
        stored = lib.store.get_codes(track.id)
        assert stored.segment_codes.shape == (track.n_segments, 4)
        again = lib.encode(music / "song2.wav", hop=LIBRARY_HOP)
        assert np.array_equal(again.codes, stored.segment_codes) and np.array_equal(again.track_code, stored.track_code)
        [r] = lib.search([music / "song2.wav"])
        assert r.error is None and len(r.results) >= 1


def _tiny_head(path, seed, bits=32):
    """A seeded tiny CRNNH checkpoint that fits unittest_vgg's maps and the 50 MTT tags."""
    import torch

    from musichash.models.crnnh import CRNNH, save_checkpoint

    torch.manual_seed(seed)
    model = CRNNH(bits, 50, grid=(4, 2), n_select=2, hidden=8, channels=4).eval()
    save_checkpoint(model, path, {"registry_name": "tiny"})
    return str(path)


def _register(monkeypatch, name, weights, segment_weights=None, bits=32):
    from musichash.models.registry import REGISTRY, ModelSpec

    spec = ModelSpec(name, "hash", "crnnh", "MTT", "test", weights=weights, segment_weights=segment_weights,
                     bits=bits, backbone="unittest_vgg", test_only=True)
    monkeypatch.setitem(REGISTRY, name, spec)


def test_two_heads_segment_codes_from_one_track_code_from_the_other(music, tmp_path, monkeypatch):
    """A model with a segment head: its segment codes are that head's, its track code the other head's."""
    from musichash.features.audio import load_audio, log_mel
    from musichash.models import ModelError
    from musichash.models.encoder import CodeModel

    track, seg = _tiny_head(tmp_path / "track.safetensors", 1), _tiny_head(tmp_path / "seg.safetensors", 2)
    _register(monkeypatch, "t_split", track, seg)
    _register(monkeypatch, "t_track", track)
    _register(monkeypatch, "t_seg", seg)
    mel = log_mel(load_audio(music / "song1.wav"))
    split, only_track, only_seg = (CodeModel(n).encode(mel) for n in ("t_split", "t_track", "t_seg"))
    assert np.array_equal(split.codes, only_seg.codes) and np.array_equal(split.track_code, only_track.track_code)
    assert not np.array_equal(split.codes, only_track.codes)  # the heads really differ
    assert np.array_equal(split.tags, only_track.tags) and np.array_equal(split.times, only_seg.times)
    # a query needs segment codes only: the track head is not run at all
    model = CodeModel("t_split")
    calls = []
    model.head = lambda feats, head=model.head: calls.append(1) or head(feats)
    model.head.features = model.segment_head.features
    query = model.encode(mel, track=False)
    assert query.track_code is None and not calls
    assert np.array_equal(query.codes, split.codes) and np.array_equal(query.tags, split.tags)
    assert np.array_equal(model.encode(mel).track_code, split.track_code) and calls
    _register(monkeypatch, "t_bad", track, _tiny_head(tmp_path / "seg16.safetensors", 3, bits=16))
    with pytest.raises(ModelError, match="seg16.safetensors holds a 16-bit CRNNH head, t_bad needs 32"):
        CodeModel("t_bad")


def test_crnnh_codes_from_resized_maps_equal_codes_from_cut_windows(music, tmp_path, monkeypatch):
    """The encoder hands CRNNH maps resized by the backbone; the codes are those of the cut windows."""
    import torch

    from musichash.features.audio import load_audio, log_mel
    from musichash.models.encoder import CodeModel

    _register(monkeypatch, "t_one", _tiny_head(tmp_path / "h.safetensors", 4))
    model = CodeModel("t_one")
    assert model.features == tuple(f"pool{i}@4x2" for i in range(1, 6))
    mel = torch.from_numpy(log_mel(load_audio(music / "song1.wav")))
    enc = model.encode(mel)
    mel = mel.to(model.device)  # the model's device, whichever it is (CUDA where there is one)
    with torch.inference_mode():
        cut = [model.head.model(b.features).relaxed.float().cpu().numpy()
               for b in model.backbone.iter_windows(mel, LIBRARY_HOP, features=[f"pool{i}" for i in range(1, 6)])]
    relaxed = np.concatenate(cut)
    assert np.abs(relaxed).min() > 1e-4  # no code bit sits on the rounding edge
    assert np.array_equal(enc.codes, np.packbits(relaxed > 0, axis=1))


def test_library_refuses_codes_of_retrained_weights(music, tmp_path, monkeypatch):
    """Weights retrained under the same model name: the library says so instead of mixing codes."""
    track, seg = tmp_path / "track.safetensors", tmp_path / "seg.safetensors"
    _register(monkeypatch, "t_split", _tiny_head(track, 1), _tiny_head(seg, 2))
    with Library.open(tmp_path / "lib", write=True, code_model="t_split") as lib:
        lib.index([music / "song1.wav"], workers=0)
    with Library.open(tmp_path / "lib") as lib:  # unchanged weights open, by name or not
        assert lib.stats().n_tracks == 1
    shutil.copy(seg, tmp_path / "kept.safetensors")
    _tiny_head(seg, 5)  # the segment head retrained in place
    for kw in ({}, {"write": True}, {"code_model": "t_split"}):
        with pytest.raises(ModelMismatchError, match=r"lib: its codes were made by other weights of t_split \(digest [0-9a-f]{16}\) "
                           r"than this musichash's \([0-9a-f]{16}\); index the music again into a new library"):
            Library.open(tmp_path / "lib", **kw)
    shutil.copy(tmp_path / "kept.safetensors", seg)  # the same weights again: the library opens
    with Library.open(tmp_path / "lib", write=True) as lib:
        assert lib.stats().n_tracks == 1


def test_library_from_before_segment_heads_is_refused(music, tmp_path, monkeypatch):
    """No digest recorded (made before heads were split): a split model refuses it, a one-head model still opens it."""
    import sqlalchemy as sa

    track, seg = _tiny_head(tmp_path / "track.safetensors", 1), _tiny_head(tmp_path / "seg.safetensors", 2)
    for name, segment_weights in (("t_split", seg), ("t_one", None)):
        _register(monkeypatch, name, track, segment_weights)
        folder = tmp_path / name
        with Library.open(folder, write=True, code_model=name) as lib:
            lib.index([music / "song1.wav"], workers=0)
        engine = sa.create_engine(f"sqlite:///{folder / 'library.db'}")
        with engine.begin() as c:
            assert c.execute(sa.text("DELETE FROM meta WHERE key = 'code_digest'")).rowcount == 1
        engine.dispose()
    with pytest.raises(ModelMismatchError, match=r"t_split: its codes come from an earlier t_split, from before its segment "
                       r"codes had their own head; index the music again into a new library"):
        Library.open(tmp_path / "t_split")
    with Library.open(tmp_path / "t_one") as lib:
        assert lib.stats().n_tracks == 1


def _flat_index(seg_codes, seg_track, seg_time):
    from musichash.search.cache import SearchIndex
    from musichash.search.faiss_index import BinaryIndex, IndexConfig

    bits = seg_codes.shape[1] * 8
    segments = BinaryIndex.build(seg_codes, np.arange(len(seg_codes), dtype=np.int64), IndexConfig("flat", bits=bits), "cpu")
    ids = np.unique(seg_track)
    tracks = BinaryIndex.build(seg_codes[np.searchsorted(seg_track, ids)], ids, IndexConfig("flat", bits=bits), "cpu")
    return SearchIndex(segments, seg_track, seg_time, seg_codes, tracks, "test")


def test_query_reranks_by_the_bits_it_is_sure_of():
    """The true track's segments differ from the query's codes in 6 bits it is unsure of; another
    track's in 4 bits it is sure of. Hamming alone ranks the other first, the unquantised values the true one."""
    from musichash.models.encoder import Encoded
    from musichash.search import query

    rng = np.random.default_rng(0)
    n_win, bits = 5, 64
    relaxed = rng.choice([-1.0, 1.0], size=(n_win, bits)) * 0.9
    relaxed[:, :6] *= 0.02  # unsure bits
    q = np.packbits(relaxed > 0, axis=1)
    flip_unsure = np.zeros(bits, dtype=bool)
    flip_unsure[:6] = True
    flip_sure = np.zeros(bits, dtype=bool)
    flip_sure[10:14] = True
    true_seg = np.packbits((relaxed > 0) ^ flip_unsure, axis=1)
    decoy_seg = np.packbits((relaxed > 0) ^ flip_sure, axis=1)
    filler = rng.integers(0, 256, size=(40, bits // 8), dtype=np.uint8)
    times = np.arange(n_win) * 1.5
    codes = np.concatenate([true_seg, decoy_seg, filler])
    seg_track = np.concatenate([np.full(n_win, 1), np.full(n_win, 2), np.full(40, 3)]).astype(np.int64)
    seg_time = np.concatenate([times, times, np.arange(40) * 1.5]).astype(np.float32)
    index = _flat_index(codes, seg_track, seg_time)
    enc = Encoded(np.zeros(1, np.float32), None, q, times, 10.0, relaxed=relaxed)
    [hits] = query.lookup(index, [enc], bits, query.Settings(k=1, relaxed=False))
    votes = query.rank(hits, query.Settings(k=1))
    assert votes[0].track_id == 2
    [hits] = query.lookup(index, [enc], bits, query.Settings(k=1))
    votes = query.rank(hits, query.Settings(k=1))
    assert votes[0].track_id == 1 and votes[0].offset_s == 0.0
    assert votes[0].hamming == 6  # the reported distance stays the Hamming distance


def test_a_query_keeps_the_values_behind_its_codes(music, lib_dir, tmp_path):
    """Library.search weighs a clip's bits by the CRNNH head's outputs, whose signs are its codes;
    the interim (binariser) codes keep the Hamming ranking their thresholds were fitted on."""
    with Library.open(tmp_path / "crnnh", write=True, code_model="unittest_crnnh") as lib:
        lib.index([music], workers=0)
        enc = lib.encode(music / "song1.wav", track=False)
        assert enc.relaxed.shape == (len(enc.codes), lib.store.bits)
        assert np.array_equal(np.packbits(enc.relaxed > 0, axis=1), enc.codes)
        assert np.abs(enc.relaxed).max() < 1.0  # tanh outputs
    index(lib_dir, music / "song1.wav")
    with Library.open(lib_dir) as lib:
        assert lib.encode(music / "song1.wav", track=False).relaxed is None


def test_dedup_finds_a_trimmed_copy_by_its_codes(music, lib_dir):
    """A copy with other bytes (FLAC, its first 2.56 s cut) joins its original through the codes
    alone, with the aligned spans; no other song joins, and a similar() of either leaves out the other."""
    y, _ = sf.read(music / "song0.wav", dtype="float32")
    cut = 2 * LIBRARY_HOP * FRAME_S  # two segment hops: the copy's windows fall on the original's grid
    sf.write(music / "copy.flac", y[int(cut * SR):], SR)
    index(lib_dir, music)
    with Library.open(lib_dir) as lib:
        assert lib.thresholds.dedup <= 0.5
        groups = lib.dedup()
        assert len(groups) == 1
        spans = {os.path.basename(m.path): m.span_s for m in groups[0].tracks}
        assert sorted(spans) == ["copy.flac", "song0.wav"]
        # the ends within a hop: the last on-grid window of either ends up to one hop before the file
        hop_s = LIBRARY_HOP * FRAME_S
        assert spans["song0.wav"] == (pytest.approx(cut, abs=0.05), pytest.approx(12, abs=hop_s))
        assert spans["copy.flac"] == (pytest.approx(0.0, abs=0.05), pytest.approx(12 - cut, abs=hop_s))
        r = lib.similar(str(music / "copy.flac"), top_k=10)
        assert [os.path.basename(p) for p in r.excluded] == ["song0.wav"]
        assert "song0.wav" not in [os.path.basename(h.path) for h in r.results]
        # a third track's candidates show one recording once: the copy goes to the left-out list
        r = lib.similar(str(music / "song1.wav"), top_k=10)
        shown = [os.path.basename(h.path) for h in r.results]
        assert len({"song0.wav", "copy.flac"} & set(shown)) == 1 and len(shown) == 3
        assert {os.path.basename(p) for p in r.excluded} == {"song0.wav", "copy.flac"} - set(shown)
