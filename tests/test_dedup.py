"""Dedup never joins two recordings: coverage of the shorter file, jingles with their own length only,
complete linkage of groups; checked on the rules, then through ``Library.dedup``."""

import os

import numpy as np
import pytest
import soundfile as sf
from synth import SR, make_song

from musichash.library import Library
from musichash.search import dedup
from musichash.search.dedup import DuplicatePair, link, plausible


def pair(a=1, b=2, span_a=(0.0, 180.0), span_b=(0.0, 180.0), score=0.9):
    return DuplicatePair(a, b, score, span_a, span_b)


def test_a_copy_covering_the_shorter_file_is_plausible():
    assert plausible(pair(), 180.0, 180.0)
    # a trimmed copy: all of the shorter one (b) lies in a
    assert plausible(pair(span_a=(20.0, 110.0), span_b=(0.0, 90.0)), 180.0, 90.0)
    # a jingle and its padded copy, about its own length
    assert plausible(pair(span_a=(0.0, 5.0), span_b=(1.0, 6.0)), 5.0, 7.0)


def test_a_few_seconds_of_a_long_track_are_not():
    # the independent evaluation's case: two full tracks joined on 3 s, [197.1, 200.1] s
    assert not plausible(pair(span_a=(197.1, 200.1), span_b=(10.0, 13.0)), 300.0, 240.0)
    # most of neither file: 60 % of the shorter
    assert not plausible(pair(span_a=(0.0, 108.0), span_b=(0.0, 108.0)), 180.0, 200.0)


def test_a_jingle_pairs_only_with_a_file_of_its_length():
    jingle = pair(span_a=(0.0, 5.0), span_b=(120.0, 125.0))  # all of the jingle, inside a 5-minute track
    assert not plausible(jingle, 5.0, 300.0)
    assert not plausible(pair(span_a=(0.0, 20.0), span_b=(0.0, 20.0)), 20.0, 31.0)
    assert plausible(pair(span_a=(0.0, 20.0), span_b=(0.0, 20.0)), 20.0, 29.0)


def test_groups_join_only_when_every_member_pairs_with_every_other():
    """a~b and b~c, but a and c are different recordings (the bridge of a chain): no group of three."""
    asked = []

    def check(x, y):
        asked.append(frozenset((x, y)))
        return None  # a and c: not the same recording

    groups = link([pair(1, 2, score=0.9), pair(2, 3, score=0.8)], check)
    assert [g[0] for g in groups] == [[1, 2]]  # the strongest link wins; 3 stays out
    assert asked == [frozenset((1, 3))]
    assert groups[0][1] == 0.9


def test_a_pair_the_neighbours_missed_is_checked_directly():
    def check(x, y):
        return pair(x, y, score=0.6)

    groups = link([pair(1, 2, score=0.9), pair(2, 3, score=0.8)], check)
    assert [g[0] for g in groups] == [[1, 2, 3]]
    assert groups[0][1] == 0.6  # the weakest link inside the group


def test_complete_linkage_keeps_two_cliques_apart():
    ab, cd, bridge = pair(1, 2, score=0.9), pair(3, 4, score=0.9), pair(2, 3, score=0.7)
    groups = link([ab, cd, bridge, pair(1, 3, score=0.7)], lambda x, y: None)  # 1-4, 2-4 never pair
    assert sorted(g[0] for g in groups) == [[1, 2], [3, 4]]


# ------------------------------------------------------------ through Library.dedup


MODEL = "unittest_crnnh"


@pytest.fixture(scope="module")
def jingle_lib(tmp_path_factory):
    """A 60 s song, its MP3-like copy (quieter, noisy), and a 5 s jingle cut out of the song."""
    root = tmp_path_factory.mktemp("jingle")
    music = root / "music"
    music.mkdir()
    y = make_song(3, 60.0)
    sf.write(music / "song.wav", y, SR)
    copy = 0.5 * y + 0.002 * np.random.default_rng(1).standard_normal(len(y)).astype(np.float32)
    sf.write(music / "copy.flac", copy, SR)
    sf.write(music / "jingle.wav", y[int(20.48 * SR) : int(25.6 * SR)], SR)  # on the segment grid
    with Library.open(root / "lib", write=True, code_model=MODEL) as lib:
        lib.index([music], workers=0)
    return root / "lib"


def names(groups):
    return [sorted(os.path.basename(m.path) for m in g.tracks) for g in groups]


def test_a_jingle_cut_from_a_track_is_not_its_duplicate(jingle_lib, monkeypatch):
    with Library.open(jingle_lib) as lib:
        assert names(lib.dedup()) == [["copy.flac", "song.wav"]]
        assert names(lib.dedup(verify=False)) == [["copy.flac", "song.wav"]]
        # the codes alone do align all of the jingle with both: the length rule is what keeps it out
        monkeypatch.setattr(dedup, "plausible", lambda p, da, db: True)
        assert names(lib.dedup(verify=False)) == [["copy.flac", "jingle.wav", "song.wav"]]
