"Tests of pal.toybench: annotations match the pixels, generation is deterministic and cached, pal-toybench writes a dataset."
import json, subprocess, sys
from pathlib import Path

import av

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pal.localize import eval_cli, evaluate, parse_gt
from pal.toybench import (ANNOTATIONS, CLASSES, SPLITS, SUBSETS, ToyBenchError, ToyConfig, annotations_json, generate,
                          object_track, render, sample_scene, scene_annotations, toy_config, toybench_cli)
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
            assert v['annotations'] == [{**a, 'label_id': CLASSES.index(a['label'])} for a in scene_annotations(scene)]
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


def _decode(path) -> np.ndarray:
    "Every frame of a video file, uint8 [T, H, W, 3]."
    with av.open(str(path)) as c: return np.stack([f.to_ndarray(format='rgb24') for f in c.decode(c.streams.video[0])])


def _psnr(a, b) -> float:
    "PSNR (dB) of two decoded videos of the same shape; inf when equal."
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float('inf') if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_generation_is_deterministic_and_cached(bench, tmp_path):
    again = generate(TINY, tmp_path / 'again')
    files = sorted(p.relative_to(bench.root) for p in bench.root.rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob('*') if p.is_file())
    for f in files:  # the same annotations and config; videos that decode to the same frames up to encoder noise
        if f.suffix == '.mp4': assert _psnr(_decode(bench.root / f), _decode(again.root / f)) > 35, f
        else: assert (bench.root / f).read_bytes() == (again.root / f).read_bytes(), f
    # complete: reused without writing
    stamp = {f: (again.root / f).stat().st_mtime_ns for f in files}
    generate(TINY, tmp_path / 'again')
    assert stamp == {f: (again.root / f).stat().st_mtime_ns for f in files}
    # another config in the same folder is refused; an unfinished folder is regenerated
    with pytest.raises(ValueError, match='another config'):
        generate(toy_config('small', n_unlabeled=2, n_train=3, n_test=2, duration=(6.0, 9.0), seed=1), tmp_path / 'again')
    (again.root / 'COMPLETE').unlink(); (again.root / 'train' / 'train_0000.mp4').write_bytes(b'partial')
    generate(TINY, tmp_path / 'again')
    assert _psnr(_decode(again.root / 'train' / 'train_0000.mp4'), _decode(bench.root / 'train' / 'train_0000.mp4')) > 35
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


# ---------------------------------------------------------------- pal-toybench: the benchmark as a dataset

TINY_ARGS = ['--n-unlabeled', '1', '--n-train', '3', '--n-test', '2', '--duration', '6', '9', '--no-progress']


def _load_like_actionformer(json_file, feat_folder, split):
    "The keys ActionFormer's THUMOS14/ActivityNet json loaders read (libs/datasets/thumos14.py, anet.py), read the same way."
    db = json.loads(Path(json_file).read_text())['database']
    label_dict = {act['label']: act['label_id'] for v in db.values() for act in v['annotations']}
    items = []
    for key, value in db.items():
        if value['subset'].lower() not in split: continue
        if not (Path(feat_folder) / f'{key}.npy').exists(): continue
        segs = np.asarray([act['segment'] for act in value['annotations']], dtype=np.float32).reshape(-1, 2)
        labels = np.asarray([label_dict[act['label']] for act in value['annotations']], dtype=np.int64)
        items.append(dict(id=key, fps=value['fps'], duration=value['duration'], segments=segs, labels=labels))
    return items, label_dict


def test_cli_writes_one_activitynet_annotations_file(tmp_path, capsys):
    out = tmp_path / 'toy'
    assert toybench_cli(['--out', str(out), *TINY_ARGS]) == 0
    printed = capsys.readouterr().out
    assert 'wrote' in printed and 'unlabeled 1, train 3, test 2 videos' in printed and ANNOTATIONS in printed
    ann = json.loads((out / ANNOTATIONS).read_text())
    assert set(ann) == {'version', 'classes', 'taxonomy', 'database'} and ann['classes'] == list(CLASSES)
    assert [t['nodeName'] for t in ann['taxonomy']] == list(CLASSES) and [t['nodeId'] for t in ann['taxonomy']] == list(range(5))
    stems = {s: sorted(p.stem for p in (out / s).glob('*.mp4')) for s in SPLITS}
    assert stems == {'unlabeled': ['unlabeled_0000'], 'train': ['train_0000', 'train_0001', 'train_0002'], 'test': ['test_0000', 'test_0001']}
    # ids = the file stems of the labelled splits, unique across them; subsets by split
    assert sorted(ann['database']) == sorted(stems['train'] + stems['test'])
    assert {v: e['subset'] for v, e in ann['database'].items()} == {**{v: 'training' for v in stems['train']}, **{v: 'testing' for v in stems['test']}}
    tiny = toy_config('small', n_unlabeled=1, n_train=3, n_test=2, duration=(6.0, 9.0))
    for vid, e in ann['database'].items():
        split = 'train' if e['subset'] == 'training' else 'test'
        assert set(e) == {'subset', 'duration', 'fps', 'num_frames', 'annotations'}
        assert isinstance(e['duration'], float) and isinstance(e['fps'], int) and isinstance(e['num_frames'], int)
        # duration and fps are the written file's: frame k at k / fps, num_frames frames
        with av.open(str(out / split / f'{vid}.mp4')) as c:
            times = [float(f.time) for f in c.decode(c.streams.video[0])]
            rate = float(c.streams.video[0].average_rate)
        assert rate == e['fps'] and len(times) == e['num_frames'] and e['duration'] == e['num_frames'] / e['fps']
        np.testing.assert_allclose(times, np.arange(e['num_frames']) / e['fps'], atol=1e-6)
        scene = sample_scene(tiny, split, int(vid.split('_')[1]))
        assert e['num_frames'] == scene.T and len(e['annotations']) == len(scene.actions) >= 1
        for a in e['annotations']:
            assert set(a) == {'segment', 'label', 'label_id', 'frames'} and isinstance(a['label_id'], int)
            assert a['label_id'] == ann['classes'].index(a['label'])
            assert 0 <= a['segment'][0] < a['segment'][1] <= e['duration']
            assert a['segment'] == [a['frames'][0] / e['fps'], a['frames'][1] / e['fps']]
        # the per-split file says the same (with its own subset name)
        assert json.loads((out / split / 'gt.json').read_text())['database'][vid] == {**e, 'subset': split}
    # what ActionFormer's loaders read: features found by id, labels from label_id, both subsets
    feats = tmp_path / 'feats'; feats.mkdir()
    for v in ann['database']: np.save(feats / f'{v}.npy', np.zeros((4, 2), np.float32))
    items, label_dict = _load_like_actionformer(out / ANNOTATIONS, feats, ['training'])
    assert [i['id'] for i in items] == stems['train'] and all(len(i['segments']) == len(i['labels']) > 0 for i in items)
    assert label_dict == {c: i for i, c in enumerate(CLASSES) if c in label_dict}
    assert len(_load_like_actionformer(out / ANNOTATIONS, feats, ['testing'])[0]) == 2
    # pal-eval takes it as ground truth: the test annotations as predictions score 1, and the train videos count as false positives
    test_pred = {'results': {v: [dict(a, score=1.0) for a in e['annotations']] for v, e in ann['database'].items() if e['subset'] == 'testing'}}
    (tmp_path / 'pred.json').write_text(json.dumps(test_pred))
    assert eval_cli(['--gt', str(out / ANNOTATIONS), '--pred', str(tmp_path / 'pred.json'), '--subset', 'testing', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['average'] == 1.0
    assert evaluate(ann, test_pred, subset='testing').average == 1.0


def test_cli_presets_and_bad_arguments(tmp_path, capsys):
    parser_help = subprocess.run([sys.executable, '-c', 'from pal.toybench import toybench_cli; toybench_cli(["--help"])'],
                                 capture_output=True, text=True, timeout=120)
    assert '{large,small}' in parser_help.stdout and '--overwrite' in parser_help.stdout
    for bad in (['--preset', 'huge'], ['--n-train', '-1'], ['--duration', '9', '6'], ['--duration', '3', '3']):
        with pytest.raises(SystemExit) as e:
            toybench_cli(['--out', str(tmp_path / 'x'), *bad])
        assert e.value.code == 2, bad
    assert 'must fit the shortest video' in capsys.readouterr().err  # the last one: ToyConfig's own check
    assert not (tmp_path / 'x').exists()


def test_cli_refuses_foreign_folders_and_keeps_other_files(tmp_path, capsys):
    mine = tmp_path / 'mine'; mine.mkdir(); (mine / 'thesis.tex').write_text('precious')
    assert toybench_cli(['--out', str(mine), *TINY_ARGS]) == 1
    assert 'refusing' in capsys.readouterr().err and sorted(p.name for p in mine.iterdir()) == ['thesis.tex']
    assert toybench_cli(['--out', str(mine), '--overwrite', *TINY_ARGS]) == 0
    assert (mine / 'thesis.tex').read_text() == 'precious' and (mine / ANNOTATIONS).is_file()
    # a complete benchmark is reused without writing; another config is refused, then replaced with --overwrite
    (mine / 'features').mkdir(); (mine / 'features' / 'train_0000.npy').write_bytes(b'x')
    stamp = {p: p.stat().st_mtime_ns for p in mine.rglob('*') if p.is_file()}
    capsys.readouterr()
    assert toybench_cli(['--out', str(mine), *TINY_ARGS]) == 0 and 'reused' in capsys.readouterr().out
    assert stamp == {p: p.stat().st_mtime_ns for p in mine.rglob('*') if p.is_file()}
    assert toybench_cli(['--out', str(mine), '--seed', '1', *TINY_ARGS]) == 1
    assert 'another config' in capsys.readouterr().err
    assert toybench_cli(['--out', str(mine), '--seed', '1', '--overwrite', *TINY_ARGS]) == 0
    assert json.loads((mine / 'config.json').read_text())['seed'] == 1
    assert (mine / 'thesis.tex').read_text() == 'precious' and (mine / 'features' / 'train_0000.npy').read_bytes() == b'x'
    (tmp_path / 'afile').write_text('x')
    assert toybench_cli(['--out', str(tmp_path / 'afile'), *TINY_ARGS]) == 1 and 'not a folder' in capsys.readouterr().err
    with pytest.raises(ToyBenchError, match='refusing'):
        generate(TINY, tmp_path / 'mine' / 'features')


def test_annotations_written_for_a_benchmark_made_before_them(bench, tmp_path):
    "A complete benchmark from before annotations.json existed (same generator version) gets it on reuse; label_id added."
    again = generate(TINY, tmp_path / 'old')
    want = (again.root / ANNOTATIONS).read_text()
    (again.root / ANNOTATIONS).unlink()
    for s in ('train', 'test'):  # gt.json as written before label_id
        gt = json.loads(again.gt_path(s).read_text())
        for v in gt['database'].values(): v['annotations'] = [{k: x for k, x in a.items() if k != 'label_id'} for a in v['annotations']]
        again.gt_path(s).write_text(json.dumps(gt, indent=1) + '\n')
    assert (generate(TINY, tmp_path / 'old').root / ANNOTATIONS).read_text() == want == (bench.root / ANNOTATIONS).read_text()
    assert annotations_json(bench) == json.loads(want)
    assert SUBSETS == {'train': 'training', 'test': 'testing'}


def test_version_2_objects_are_larger_and_v1_size_draws_v1_scenes(tmp_path):
    "Generator v2 changes only the object size: obj_size=(0.14, 0.2) gives version 1's scenes, draw for draw."
    from pal.toybench import GENERATOR_VERSION
    assert GENERATOR_VERSION == 2 and ToyConfig().obj_size == (0.22, 0.28)
    v1_cfg = toy_config('small', obj_size=(0.14, 0.2))
    assert v1_cfg.key() != toy_config('small').key()
    want = {('train', 0): [('distractor', 0, 151, 6.5013), ('distractor', 0, 151, 7.6961), ('zigzag', 15, 41, 6.6663),
                           ('spin', 89, 117, 7.3849), ('spin', 124, 142, 5.8464)],
            ('test', 7): [('distractor', 0, 139, 5.8163), ('spin', 5, 26, 6.6271), ('zigzag', 40, 59, 7.3014), ('pulse', 91, 121, 6.0571)]}
    for (split, i), objs in want.items():  # what version 1's generator drew (recorded before the change)
        v1, v2 = sample_scene(v1_cfg, split, i), sample_scene(toy_config('small'), split, i)
        assert [(o.kind, o.start, o.end) for o in v1.objects] == [o[:3] for o in objs]
        np.testing.assert_allclose([o.radius for o in v1.objects], [o[3] for o in objs], atol=1e-3)
        assert [(o.kind, o.start, o.end) for o in v2.objects] == [o[:3] for o in objs] and v2.bg == v1.bg
        for o in v2.objects:
            assert 0.22 * 40 <= o.radius <= 0.28 * 40
        for o in v2.actions:  # the larger objects are still drawn in every annotated frame (the margin keeps them in view)
            assert o.radius + TINY.drift + 1 <= o.pos[0] <= 40 - o.radius - TINY.drift - 1 or o.kind == 'zigzag'
    with pytest.raises(ValueError, match='obj_size needs'): toy_config('small', obj_size=(0.3, 0.2))
    with pytest.raises(ValueError, match='do not fit'): toy_config('small', obj_size=(0.2, 0.4))
    assert toybench_cli(['--out', str(tmp_path / 'v1'), '--obj-size', '0.14', '0.2', *TINY_ARGS]) == 0
    assert json.loads((tmp_path / 'v1' / 'config.json').read_text())['obj_size'] == [0.14, 0.2]
