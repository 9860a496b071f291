"Tests of pal.toybench: annotations match the pixels, generation is deterministic and cached."
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pal.localize import evaluate, parse_gt
from pal.toybench import (CLASSES, SPLITS, ToyConfig, generate, object_track, render, sample_scene, scene_annotations,
                          toy_config)
from pal.video import VideoReader

TINY = toy_config('small', n_unlabeled=2, n_train=3, n_test=2, duration=(6.0, 9.0))


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return generate(TINY, tmp_path_factory.mktemp('toy') / 'bench')


def _changed_frames(scene, full, i):
    "Frames where the full render differs from the render without object i."
    return np.nonzero((full != render(scene, hide=(i,))).any(axis=(1, 2, 3)))[0]


@settings(max_examples=15, deadline=None)
@given(split=st.sampled_from(SPLITS), index=st.integers(0, 10_000))
def test_action_pixels_exactly_inside_segments(split, index):
    scene = sample_scene(TINY, split, index)
    anns, full = scene_annotations(scene), render(scene)
    assert 1 <= len(anns) <= 4
    for i, o in enumerate(scene.objects):
        if o.kind == 'distractor': continue
        changed = _changed_frames(scene, full, i)
        assert changed.tolist() == list(range(o.start, o.end))  # present in every annotated frame, nowhere else
        a = next(a for a in anns if a['frames'] == [o.start, o.end])
        assert a['label'] == o.kind and a['segment'] == [o.start / TINY.fps, o.end / TINY.fps]
    # non-overlapping, with the configured gap, inside the video
    fr = [a['frames'] for a in anns]
    gap = int(np.ceil(TINY.gap * TINY.fps))
    assert fr[0][0] >= gap and fr[-1][1] <= scene.T - gap
    assert all(b[0] - a[1] >= gap for a, b in zip(fr, fr[1:]))


def test_distractors_move_linearly():
    scene = sample_scene(TINY, 'train', 0)
    for o in scene.objects:
        tr = object_track(o, TINY.fps, TINY.size)
        if o.kind != 'distractor': continue
        assert o.start == 0 and o.end == scene.T
        w = TINY.size + 4 * o.radius
        step = np.diff(tr['x'])
        step = (step + w / 2) % w - w / 2  # undo the wrap-around
        np.testing.assert_allclose(step, o.amp * np.cos(o.direction) / TINY.fps, atol=1e-9)
        assert np.ptp(tr['angle']) == 0 and np.ptp(tr['scale']) == 0 and np.ptp(tr['bright']) == 0


def test_classes_differ_by_motion():
    "Each class varies exactly its own motion channel(s)."
    moving = {'bounce': {'y'}, 'spin': {'angle'}, 'pulse': {'scale'}, 'zigzag': {'x', 'y'}, 'blink': {'bright'}}
    for c in CLASSES:
        o = sample_scene(TINY, 'train', 5, labels=[c]).actions[0]
        tr = object_track(o, TINY.fps, TINY.size)
        assert {k for k, v in tr.items() if np.ptp(v) > 1e-6} == moving[c], c
    with pytest.raises(ValueError, match='unknown toy preset'):
        toy_config('huge')


def test_layout_and_ground_truth(bench):
    assert [len(bench.videos(s)) for s in SPLITS] == [2, 3, 2]
    assert (bench.root / 'COMPLETE').is_file() and not (bench.root / 'unlabeled' / 'gt.json').exists()
    for split in ('train', 'test'):
        gt = bench.gt(split)
        assert set(gt['database']) == {p.stem for p in bench.videos(split)}
        assert gt['classes'] == list(CLASSES)
        for name, v in gt['database'].items():
            scene = sample_scene(TINY, split, int(name.split('_')[1]))
            assert v['subset'] == split and v['num_frames'] == scene.T and v['duration'] == scene.T / TINY.fps
            assert v['annotations'] == scene_annotations(scene)
        parse_gt(gt)  # valid ActivityNet ground truth: evaluating it against itself gives 1
        perfect = {'results': {n: [dict(a, score=1.0) for a in v['annotations']] for n, v in gt['database'].items()}}
        assert evaluate(gt, perfect).average == 1.0


def test_decoded_video_shows_actions_where_annotated(bench):
    "The mp4 round trip keeps every action exactly in its annotated frames."
    for p in bench.videos('train'):
        scene = sample_scene(TINY, 'train', int(p.stem.split('_')[1]))
        vr = VideoReader(p)
        assert vr.num_frames == scene.T and vr.fps == pytest.approx(TINY.fps)
        dec = vr.get(list(range(scene.T))).numpy().astype(np.float64)
        full = render(scene).astype(np.float64)
        err_full = ((dec - full) ** 2).mean(axis=(1, 2, 3))  # [T]
        assert 10 * np.log10(255 ** 2 / err_full.mean()) > 28  # PSNR of the whole video, dB
        for i, o in enumerate(scene.objects):
            if o.kind == 'distractor': continue
            hidden = render(scene, hide=(i,)).astype(np.float64)
            err_hidden = ((dec - hidden) ** 2).mean(axis=(1, 2, 3))
            inside = np.zeros(scene.T, bool); inside[o.start:o.end] = True
            # inside the segment the decoded frames clearly contain the object...
            assert np.all(err_hidden[inside] > 1.5 * err_full[inside]), (p.name, o.kind)
            # ...outside it they do not: there the render with and without the object is the same image
            assert np.array_equal(err_hidden[~inside], err_full[~inside])


def test_generation_is_deterministic_and_cached(bench, tmp_path):
    again = generate(TINY, tmp_path / 'again')
    files = sorted(p.relative_to(bench.root) for p in bench.root.rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob('*') if p.is_file())
    for f in files:
        assert (bench.root / f).read_bytes() == (again.root / f).read_bytes(), f
    # complete: reused without writing
    stamp = {f: (again.root / f).stat().st_mtime_ns for f in files}
    generate(TINY, tmp_path / 'again')
    assert stamp == {f: (again.root / f).stat().st_mtime_ns for f in files}
    # another config in the same folder is refused; an unfinished folder is regenerated
    with pytest.raises(ValueError, match='another config'):
        generate(toy_config('small', n_unlabeled=2, n_train=3, n_test=2, duration=(6.0, 9.0), seed=1), tmp_path / 'again')
    (again.root / 'COMPLETE').unlink(); (again.root / 'train' / 'train_0000.mp4').write_bytes(b'partial')
    generate(TINY, tmp_path / 'again')
    assert (again.root / 'train' / 'train_0000.mp4').read_bytes() == (bench.root / 'train' / 'train_0000.mp4').read_bytes()
    # a folder with other content is never deleted
    (tmp_path / 'mine').mkdir(); (tmp_path / 'mine' / 'thesis.tex').write_text('precious')
    with pytest.raises(ValueError, match='refusing'):
        generate(TINY, tmp_path / 'mine')
    assert (tmp_path / 'mine' / 'thesis.tex').read_text() == 'precious'


def test_config_key_and_default_root(tmp_path, monkeypatch):
    assert TINY.key() == toy_config('small', n_unlabeled=2, n_train=3, n_test=2, duration=(6.0, 9.0)).key()
    assert TINY.key() != toy_config('small').key()
    cfg = ToyConfig(n_unlabeled=0, n_train=1, n_test=0, duration=(4.0, 4.0), action_len=(1.0, 2.0))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    tb = generate(cfg)
    assert tb.root == tmp_path / 'pal' / 'toybench' / cfg.key() and len(tb.videos('train')) == 1
    assert json.loads((tb.root / 'config.json').read_text())['n_train'] == 1
