"""train-tagger's dataset layouts read the datasets as distributed (tiny stand-ins made here, no audio decoded)."""

from __future__ import annotations

import numpy as np
import pytest

from musichash.train.data import DatasetError
from musichash.train.tagger_data import MTT_TOP, load_labelled


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    return path


def test_mtt_keeps_the_50_most_frequent_tags_and_splits_by_folder(tmp_path):
    rng = np.random.default_rng(0)
    tags = [f"t{j}" for j in range(60)]
    freq = np.linspace(0.9, 0.05, 60)  # t0 most frequent, t59 least
    rows = ["\t".join(["clip_id", *tags, "mp3_path"])]
    folders = "0123456789abcdef"
    for i in range(64):
        path = f"{folders[i % 16]}/clip{i}.mp3"
        _touch(tmp_path / path)
        rows.append("\t".join([str(i), *(str(int(v)) for v in rng.random(60) < freq), path]))
    (tmp_path / "annotations_final.csv").write_text("\n".join(rows) + "\n")
    d = load_labelled(tmp_path)
    assert d.layout == "mtt" and d.multilabel and d.targets.shape == (64, MTT_TOP)
    assert "t0" in d.names and "t59" not in d.names
    assert {s: d.split.count(s) for s in ("train", "valid", "test")} == {"train": 48, "valid": 4, "test": 12}
    assert d.split[d.files.index(tmp_path / "c/clip12.mp3")] == "valid"


def test_mtt_names_missing_audio(tmp_path):
    (tmp_path / "annotations_final.csv").write_text("clip_id\tguitar\tmp3_path\n1\t1\t0/a.mp3\n")
    with pytest.raises(DatasetError, match=r"1 of 1 audio files are missing, e\.g\. .*0/a\.mp3; the mp3 folders"):
        load_labelled(tmp_path)


def test_fma_reads_genre_top_and_the_metadata_split_of_the_audio_subset(tmp_path):
    meta = tmp_path / "fma_metadata" / "tracks.csv"
    meta.parent.mkdir()
    lines = [",set,set,track", ",split,subset,genre_top", "track_id,,,",
             "2,training,small,Hip-Hop", "5,validation,small,Rock", "10,test,small,Rock", "11,training,medium,Pop", "12,training,small,"]
    meta.write_text("\n".join(lines) + "\n")
    for tid in ("000002", "000005", "000010"):
        _touch(tmp_path / "fma_small" / tid[:3] / f"{tid}.mp3")
    d = load_labelled(tmp_path)
    assert d.layout == "fma" and not d.multilabel and d.names == ("Hip-Hop", "Rock")
    assert [p.name for p in d.files] == ["000002.mp3", "000005.mp3", "000010.mp3"]
    assert d.split == ("train", "valid", "test")


def test_gtzan_takes_a_published_split_and_leaves_out_what_it_does_not_name(tmp_path):
    for g in ("blues", "jazz"):
        for i in range(4):
            _touch(tmp_path / "genres" / g / f"{g}.{i:05d}.wav")
    lists = tmp_path / "splits"
    lists.mkdir()
    (lists / "train_filtered.txt").write_text("blues/blues.00000.wav\njazz/jazz.00000.wav\njazz/jazz.00001.wav\n")
    (lists / "valid_filtered.txt").write_text("blues/blues.00001.wav\n")
    (lists / "test_filtered.txt").write_text("blues/blues.00002.wav\njazz/jazz.00002.wav\n")
    d = load_labelled(tmp_path / "genres", "gtzan", lists)
    assert len(d.files) == 6 and d.split.count("train") == 3 and d.split.count("test") == 2
    assert all("00003" not in p.name for p in d.files)  # named by no list: left out
    pairs = tmp_path / "split.tsv"
    pairs.write_text("blues/blues.00000.wav\ttrain\njazz/jazz.00003.wav\ttest\n")
    d = load_labelled(tmp_path / "genres", "gtzan", pairs)
    assert [p.name for p in d.files] == ["blues.00000.wav", "jazz.00003.wav"] and d.split == ("train", "test")
    pairs.write_text("blues/blues.00000.wav\ttraining\n")
    with pytest.raises(DatasetError, match=r"split\.tsv:1: expected 'PATH SPLIT'"):
        load_labelled(tmp_path / "genres", "gtzan", pairs)


def test_data_without_a_split_is_split_at_random_by_the_seed(tmp_path):
    for g in ("a", "b"):
        for i in range(10):
            _touch(tmp_path / g / f"{i}.wav")
    one, again, other = load_labelled(tmp_path, seed=1), load_labelled(tmp_path, seed=1), load_labelled(tmp_path, seed=2)
    assert one.split == again.split != other.split
    assert (one.split.count("train"), one.split.count("valid"), one.split.count("test")) == (14, 2, 4)
