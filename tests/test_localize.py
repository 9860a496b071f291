"Tests of pal.localize: ActivityNet metric, pal-eval, Soft-NMS, the localization head."
import json, math, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pal.localize import (TIOU_PRESETS, EvalInputError, FeatureVideo, HeadConfig, LocDataset, LocHead, average_precision,
                          collate, decode_video, eval_cli, evaluate, giou_loss_1d, interpolated_ap, load_features,
                          load_gt, load_pred, make_targets, match_detections, parse_pred, predict, segment_iou, soft_nms,
                          synthetic_features, train_head)

torch.set_num_threads(1)


def db(**videos):
    "Ground truth from video=[(s, e, label), ...]."
    return {'database': {v: {'annotations': [{'segment': [s, e], 'label': l} for s, e, l in a]} for v, a in videos.items()}}


def res(**videos):
    "Predictions from video=[(s, e, label, score), ...]."
    return {'results': {v: [{'segment': [s, e], 'label': l, 'score': x} for s, e, l, x in p] for v, p in videos.items()}}


# ---------------------------------------------------------------- metric

def test_segment_iou_values():
    iou = segment_iou([[0, 10]], [[5, 15], [10, 20], [2, 4], [0, 10], [-5, 0]])[0]
    np.testing.assert_allclose(iou, [5 / 15, 0, 0.2, 1, 0])


def test_perfect_detections_score_one():
    gt = db(a=[(0, 4, 'x'), (6, 9, 'y')], b=[(1, 2, 'x')], c=[(3, 8, 'y'), (10, 12, 'x')])
    pred = res(a=[(0, 4, 'x', .5), (6, 9, 'y', .9)], b=[(1, 2, 'x', .3)], c=[(3, 8, 'y', .2), (10, 12, 'x', .7)])
    r = evaluate(gt, pred, TIOU_PRESETS['anet'])
    np.testing.assert_allclose(r.ap, 1.0)
    assert r.average == 1.0 and len(r.tious) == 10 and r.n_ignored == 0


def test_duplicate_is_false_positive():
    # two actions; the best one is predicted twice before the other one is found
    gt = {'v': np.array([[0., 4.], [10., 14.]])}
    order, tp = match_detections(gt, ['v'] * 3, [[0, 4], [0, 4], [10, 14]], [.9, .8, .7], [0.5])
    assert tp[0].tolist() == [True, False, True]
    # precision 1 at recall 1/2, then 2/3 at recall 1: AP = 1/2 + 1/2 * 2/3
    ap = average_precision(gt, ['v'] * 3, [[0, 4], [0, 4], [10, 14]], [.9, .8, .7], [0.5])
    assert ap[0] == pytest.approx(0.5 + 1 / 3)


def test_fall_through_to_next_ground_truth():
    gt = {'v': np.array([[1., 7.], [3., 9.]])}
    segs = [[1, 7], [1.5, 7.2], [1.2, 6.8]]
    iou = segment_iou(segs, gt['v'])
    np.testing.assert_allclose(iou[1], [5.5 / 6.2, 4.2 / 7.5]); np.testing.assert_allclose(iou[2], [5.6 / 6, 3.8 / 7.8])
    _, tp = match_detections(gt, ['v'] * 3, segs, [.9, .8, .7], [0.5, 0.6])
    # 0.5: the 2nd's best gt (0) is taken -> falls through to gt 1 (0.56): TP; the 3rd has gt 1 at 0.487: FP
    # 0.6: gt 1 at 0.56 is below the threshold: the 2nd is an FP too
    assert tp.tolist() == [[True, True, False], [True, False, False]]


def test_best_match_taken_and_next_below_threshold_is_fp():
    gt = {'v': np.array([[0., 10.], [8., 20.]])}
    # second prediction's best gt (0, tIoU 0.9) is taken; next (gt 1) overlaps 1/20 < 0.5: FP
    _, tp = match_detections(gt, ['v', 'v'], [[0, 10], [0, 9]], [.9, .8], [0.5])
    assert tp[0].tolist() == [True, False]


def test_threshold_is_inclusive_and_videos_are_separate():
    gt = {'a': np.array([[0., 2.]]), 'b': np.array([[0., 4.]])}
    _, tp = match_detections(gt, ['b', 'a'], [[0, 2], [0, 1]], [.9, .8], [0.5])
    assert tp[0].tolist() == [True, True]  # 'b': tIoU exactly 0.5 counts; 'a': its own gt, tIoU 0.5


def test_missing_class_counts_zero():
    gt = db(a=[(0, 4, 'x'), (5, 6, 'y'), (7, 9, 'z')])
    r = evaluate(gt, res(a=[(0, 4, 'x', 1.0)]), [0.5])
    assert r.classes == ['x', 'y', 'z']
    np.testing.assert_allclose(r.ap[:, 0], [1, 0, 0])
    assert r.mAP[0] == pytest.approx(1 / 3)


def test_hand_computed_mixed_case():
    gt = db(a=[(0, 4, 'x'), (10, 14, 'x')], b=[(5, 9, 'x')])
    pred = res(a=[(0, 4, 'x', .9), (20, 24, 'x', .8), (10.5, 14, 'x', .5)], b=[(5, 9, 'x', .7), (0, 2, 'x', .6)])
    # TP FP TP FP TP: precision 1, 1/2, 2/3, 1/2, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1
    r = evaluate(gt, pred, [0.5, 0.9])
    assert r.ap[0, 0] == pytest.approx(1 / 3 + 2 / 9 + 1 / 5)
    # at 0.9 the [10.5, 14] prediction (tIoU 3.5/4) is an FP: TP FP TP FP FP -> 1/3 + 1/3 * 2/3
    assert r.ap[0, 1] == pytest.approx(1 / 3 + 2 / 9)


def test_interpolated_ap_envelope():
    assert interpolated_ap([1, 0.5, 2 / 3], [0.5, 0.5, 1.0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert interpolated_ap([0.5, 2 / 3], [0.25, 0.5]) == pytest.approx(0.5 * 2 / 3)  # envelope lifts the first step
    assert interpolated_ap([], []) == 0.0


def test_unknown_videos_and_labels_are_ignored_and_counted():
    r = evaluate(db(a=[(0, 4, 'x')]), res(a=[(0, 4, 'x', .5)], zz=[(0, 4, 'x', .9)], b=[]), [0.5])
    assert r.ap[0, 0] == 1.0 and r.n_ignored == 1
    r = evaluate(db(a=[(0, 4, 'x')]), res(a=[(0, 4, 'q', .9), (0, 4, 'x', .1)]), [0.5])
    assert r.ap[0, 0] == 1.0 and r.n_ignored == 1


def test_subset_filter():
    gt = db(a=[(0, 4, 'x')], b=[(0, 4, 'x')])
    gt['database']['a']['subset'] = 'validation'; gt['database']['b']['subset'] = 'training'
    pred = res(a=[(0, 4, 'x', .9)])
    assert evaluate(gt, pred, [0.5]).ap[0, 0] == 0.5
    r = evaluate(gt, pred, [0.5], subset='validation')
    assert r.ap[0, 0] == 1.0
    with pytest.raises(EvalInputError, match='testing'):
        evaluate(gt, pred, subset='testing')


def _reference_ap(gt, preds, thr):
    "Independent re-statement of the official ActivityNet loop for one class and one threshold."
    preds = sorted(preds, key=lambda p: -p[3])
    lock = {v: [False] * len(g) for v, g in gt.items()}
    tp = []
    for v, s, e, _ in preds:
        hit = False
        if v in gt:
            ious = [max(0, min(e, ge) - max(s, gs)) / ((e - s) + (ge - gs) - max(0, min(e, ge) - max(s, gs))) for gs, ge in gt[v]]
            for k in sorted(range(len(ious)), key=lambda k: -ious[k]):
                if ious[k] < thr: break
                if lock[v][k]: continue
                lock[v][k] = hit = True; break
        tp.append(hit)
    npos = sum(len(g) for g in gt.values())
    ctp = np.cumsum(tp); prec = ctp / np.arange(1, len(tp) + 1); rec = ctp / npos
    ap, best = 0.0, 0.0
    for i in range(len(tp) - 1, -1, -1):  # area under the envelope, right to left
        best = max(best, prec[i]); prev = rec[i - 1] if i else 0.0
        ap += (rec[i] - prev) * best
    return ap


seg = st.tuples(st.integers(0, 20), st.integers(1, 8)).map(lambda t: (float(t[0]), float(t[0] + t[1])))


@settings(max_examples=60, deadline=None)
@given(gt_a=st.lists(seg, min_size=1, max_size=4), gt_b=st.lists(seg, max_size=3),
       preds=st.lists(st.tuples(st.sampled_from(['a', 'b', 'c']), seg), max_size=10),
       thr=st.sampled_from([0.1, 0.3, 0.5, 0.7]), data=st.data())
def test_ap_matches_reference_and_properties(gt_a, gt_b, preds, thr, data):
    gt = {'a': np.array(gt_a), **({'b': np.array(gt_b)} if gt_b else {})}
    scores = data.draw(st.permutations(list(range(len(preds)))))  # distinct scores
    P = [(v, s, e, float(sc) + 1) for (v, (s, e)), sc in zip(preds, scores)]
    ap = average_precision(gt, [p[0] for p in P], [p[1:3] for p in P], [p[3] for p in P], [thr])[0]
    assert 0.0 <= ap <= 1.0
    assert ap == pytest.approx(_reference_ap({k: [tuple(x) for x in g] for k, g in gt.items()}, P, thr))
    # shuffling the input order changes nothing; a lowest-score false positive changes nothing
    perm = data.draw(st.permutations(list(range(len(P)))))
    Q = [P[i] for i in perm] + [('c', 0.0, 1.0, 0.5)]
    assert average_precision(gt, [p[0] for p in Q], [p[1:3] for p in Q], [p[3] for p in Q], [thr])[0] == pytest.approx(ap)
    # the ground truth itself, in any score order, is perfect
    G = [(v, s, e) for v, g in gt.items() for s, e in g]
    assert average_precision(gt, [g[0] for g in G], [g[1:] for g in G], np.arange(len(G))[::-1], [thr])[0] == pytest.approx(1.0)


def test_bad_inputs_name_the_problem():
    with pytest.raises(EvalInputError, match="start <= end"):
        evaluate(db(a=[(3, 1, 'x')]), res())
    with pytest.raises(EvalInputError, match="'score'"):
        evaluate(db(a=[(0, 1, 'x')]), {'results': {'a': [{'segment': [0, 1], 'label': 'x', 'score': 'high'}]}})
    with pytest.raises(EvalInputError, match="annotations"):
        evaluate({'database': {'a': {}}}, res())
    with pytest.raises(EvalInputError, match="'results'"):
        evaluate(db(a=[(0, 1, 'x')]), {'version': 1, 'result': {}})


# ---------------------------------------------------------------- pal-eval

@pytest.fixture
def files(tmp_path):
    gt = db(a=[(0, 4, 'jump'), (10, 14, 'spin')], b=[(5, 9, 'jump')])
    pred = res(a=[(0.3, 4, 'jump', .9)], b=[(5, 9.5, 'jump', .8)])
    (tmp_path / 'gt.json').write_text(json.dumps(gt)); (tmp_path / 'pred.json').write_text(json.dumps(pred))
    return tmp_path


def test_eval_cli_text_and_json(files, capsys):
    assert eval_cli(['--gt', str(files / 'gt.json'), '--pred', str(files / 'pred.json')]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith('tIoU 0.30') and '50.00%' in out[0] and out[-1].startswith('average')
    assert len(out) == 6
    assert eval_cli(['--gt', str(files / 'gt.json'), '--pred', str(files / 'pred.json'), '--json', '--tiou', '0.5', '0.9']) == 0
    d = json.loads(capsys.readouterr().out)
    # jump: tIoU 3.7/4 and 4/4.5, both pass 0.5; at 0.9 only the first (AP 1/2); spin never predicted
    assert d == {'tiou': [0.5, 0.9], 'mAP': [0.5, 0.25], 'average': 0.375}
    assert eval_cli(['--gt', str(files / 'gt.json'), '--pred', str(files / 'pred.json'), '--json', '--preset', 'anet']) == 0
    d = json.loads(capsys.readouterr().out)
    assert d['tiou'] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert d['mAP'] == [0.5] * 8 + [0.25, 0.0]


def test_eval_cli_errors_name_the_file(files, capsys):
    (files / 'bad.json').write_text('{"results": {"a": [}')
    assert eval_cli(['--gt', str(files / 'gt.json'), '--pred', str(files / 'bad.json')]) == 1
    err = capsys.readouterr().err
    assert 'bad.json' in err and 'not valid JSON' in err
    assert eval_cli(['--gt', str(files / 'missing.json'), '--pred', str(files / 'pred.json')]) == 1
    assert 'missing.json' in capsys.readouterr().err
    assert eval_cli(['--gt', str(files / 'pred.json'), '--pred', str(files / 'pred.json')]) == 1  # wrong kind of file
    assert "'database'" in capsys.readouterr().err
    with pytest.raises(EvalInputError, match='pred.json'):
        load_gt(files / 'pred.json')
    with pytest.raises(SystemExit):
        eval_cli(['--gt', str(files / 'gt.json'), '--pred', str(files / 'pred.json'), '--tiou', '1.5'])


def test_eval_cli_exit_status_in_a_process(files):
    "The installed `pal-eval` (or, if not installed, `sys.exit(eval_cli())`): exit status 1, the file named on stderr."
    script = Path(sys.executable).parent / 'pal-eval'
    cmd = [str(script)] if script.is_file() else [sys.executable, '-c', 'import sys; from pal.localize import eval_cli; sys.exit(eval_cli())']
    (files / 'bad.json').write_text('not json')
    bad = subprocess.run(cmd + ['--gt', str(files / 'bad.json'), '--pred', str(files / 'pred.json')],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and 'bad.json' in bad.stderr


# ---------------------------------------------------------------- Soft-NMS

def test_soft_nms_exact_gaussian_decay():
    segs = torch.tensor([[0., 10.], [0., 8.], [5., 15.], [20., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.3])
    s, sc, lb = soft_nms(segs, scores, sigma=0.3)
    i1, i2 = 0.8, 5 / 15  # tIoU of [0, 8] and [5, 15] with [0, 10]
    a = 0.8 * math.exp(-i1 ** 2 / 0.3)  # [0, 8] after the first selection
    b = 0.7 * math.exp(-i2 ** 2 / 0.3)  # [5, 15]
    assert b > a  # so [5, 15] is selected second and decays [0, 8] once more
    a2 = a * math.exp(-(3 / 15) ** 2 / 0.3)
    assert sc.tolist() == pytest.approx([0.9, b, 0.3, a2], rel=1e-5)
    assert s.tolist() == [[0, 10], [5, 15], [20, 30], [0, 8]]
    assert lb.tolist() == [0, 0, 0, 0]


def test_soft_nms_per_class_min_score_and_cap():
    segs = torch.tensor([[0., 4.], [0., 4.], [0., 4.]])
    s, sc, lb = soft_nms(segs, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 0, 1]), sigma=0.5)
    # class 1: identical segments -> the second decays by exp(-1/0.5); class 0 untouched
    assert sc.tolist() == pytest.approx([0.9, 0.8, 0.7 * math.exp(-2)])
    assert lb.tolist() == [1, 0, 1]
    s, sc, lb = soft_nms(segs, torch.tensor([0.9, 0.8, 0.7]), None, sigma=0.5, min_score=0.2)
    assert sc.tolist() == pytest.approx([0.9])  # 0.8*e^-2 = 0.108 < 0.2: stop
    assert len(soft_nms(segs, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 2]), max_segs=2)[1]) == 2
    e = soft_nms(torch.zeros(0, 2), torch.zeros(0))
    assert e[0].shape == (0, 2) and e[1].shape == (0,)


# ---------------------------------------------------------------- head

def test_targets_and_collate():
    v = FeatureVideo('v', np.zeros((10, 2)), np.arange(10) * 2.0 + 1.0)  # rows at 1, 3, ..., 19 s; stride 2
    assert v.stride == 2.0 and v.duration == 20.0
    cls, reg = make_targets(v, [[2.0, 8.0], [4.0, 6.0]], [0, 1], 2)
    # rows 3, 5, 7 s inside the first; 5 s also inside the shorter second, which wins
    assert cls[:, 0].nonzero()[0].tolist() == [1, 3] and cls[:, 1].nonzero()[0].tolist() == [2]
    np.testing.assert_allclose(reg[1], [0.5, 2.5]); np.testing.assert_allclose(reg[2], [0.5, 0.5])
    np.testing.assert_allclose(reg[[0, 4]], 0)
    gt = db(v=[(2.0, 9.0, 'b')], w=[(0.0, 1.0, 'a')])
    w = FeatureVideo('w', np.ones((4, 2)), [0.25, 0.75, 1.25, 1.75])
    ds = LocDataset([v, w], gt, ['a', 'b'])
    b = collate([ds[0], ds[1]])
    assert b['feats'].shape == (2, 2, 10) and b['mask'].sum(1).tolist() == [10, 4]
    assert b['cls'][1, 0].tolist() == [1, 1, 0, 0] + [0] * 6 and b['feats'][1, :, 4:].abs().sum() == 0


def test_feature_video_checks():
    with pytest.raises(ValueError, match='increase'):
        FeatureVideo('x', np.zeros((3, 2)), [0, 2, 1])
    with pytest.raises(ValueError, match='x'):
        FeatureVideo('x', np.zeros((3, 2)), [0, 1])


def test_giou_loss_values():
    l = giou_loss_1d(torch.tensor([[1., 1.], [1., 1.], [0., 1.]]), torch.tensor([[1., 1.], [2., 2.], [-2., 3.]]))
    # identical; nested (IoU 1/2); disjoint [0,1] vs [2,3]: IoU 0, enclosing 3, union 2
    np.testing.assert_allclose(l.numpy(), [0, 0.5, 1 + 1 / 3], atol=1e-6)


def test_load_features(tmp_path):
    np.save(tmp_path / 'v1.npy', np.arange(12, dtype=np.float32).reshape(4, 3))
    man = {'videos': {'v1': {'fps': 8, 'num_frames': 20, 'times': [0.5, 1.0, 1.5, 2.0]}}}
    (tmp_path / 'manifest.json').write_text(json.dumps(man))
    f = load_features(tmp_path)
    assert list(f) == ['v1'] and f['v1'].feats[1].tolist() == [3, 4, 5] and f['v1'].duration == 2.5
    man['videos']['v2'] = {'times': [0.5]}
    (tmp_path / 'manifest.json').write_text(json.dumps(man))
    with pytest.raises(FileNotFoundError, match='v2.npy'):
        load_features(tmp_path)


def test_head_learns_obvious_features():
    train, gt_train = synthetic_features(24, seed=0, prefix='train')
    test, gt_test = synthetic_features(12, seed=1, prefix='test')
    head, hist = train_head(train, gt_train, device='cpu')
    assert head.classes == ['class0', 'class1', 'class2']
    assert hist[-1]['loss'] < 0.5 * hist[0]['loss']
    pred = predict(head, test)
    parse_pred(pred)  # valid ActivityNet results
    r = evaluate(gt_test, pred, [0.3, 0.5, 0.7])
    assert r.mAP[1] > 0.8, r
    # the same head on pure-noise features finds (almost) nothing
    noise = [FeatureVideo(v.name, np.random.default_rng(0).normal(size=v.feats.shape), v.times, v.duration) for v in test]
    assert evaluate(gt_test, predict(head, noise), [0.5]).mAP[0] < 0.3


def test_decode_video_segments_are_clipped_and_sorted():
    train, gt_train = synthetic_features(6, seed=0, rows=(40, 60), prefix='t')
    head = LocHead(32, 2, classes=['p', 'q']).eval()
    out = decode_video(head, train[0], pre_thresh=0.0, max_segs=30)
    assert 0 < len(out) <= 30
    assert all(0 <= d['segment'][0] < d['segment'][1] <= train[0].duration for d in out)
    assert [d['score'] for d in out] == sorted((d['score'] for d in out), reverse=True)


def test_train_head_is_seeded_and_leaves_global_rng_alone():
    train, gt = synthetic_features(6, rows=(40, 60), seed=3)
    cfg = HeadConfig(epochs=3, seed=7)
    torch.manual_seed(123); before = torch.rand(3)
    torch.manual_seed(123)
    h1, hist1 = train_head(train, gt, cfg=cfg, device='cpu')
    after = torch.rand(3)
    assert torch.equal(before, after)  # the caller's random stream is untouched
    h2, hist2 = train_head(train, gt, cfg=cfg, device='cpu')
    assert hist1 == hist2 and all(torch.equal(a, b) for a, b in zip(h1.state_dict().values(), h2.state_dict().values()))
    h3, hist3 = train_head(train, gt, cfg=HeadConfig(epochs=3, seed=8), device='cpu')
    assert hist3 != hist1
    with pytest.raises(ValueError, match='different feature sizes'):
        train_head(train + [FeatureVideo('odd', np.zeros((5, 7)), np.arange(5.0))], gt, device='cpu')
