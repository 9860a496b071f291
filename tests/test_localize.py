"Tests of pal.localize (tIoU, matching, AP, Soft-NMS) and pal.evaluate (ActivityNet protocol, pal-eval, the localization head)."
import json, math, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pal.localize import TIOU_PRESETS, average_precision, interpolated_ap, match_detections, segment_iou, soft_nms
from pal.evaluate import (EvalInputError, FeatureVideo, HeadConfig, LocDataset, LocHead, collate, decode_video, eval_cli, evaluate,
                          giou_loss_1d, load_features, load_gt, load_pred, make_targets, parse_pred, predict, synthetic_features,
                          train_head)

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


def test_unknown_videos_are_false_positives_by_default():
    # the two-prediction case: official 0.5 (the unknown video ranks first, a false positive); ignoring it gives 1
    gt, pred = db(a=[(0, 4, 'x')]), res(a=[(0, 4, 'x', .8)], zz=[(0, 4, 'x', .9)], b=[])
    r = evaluate(gt, pred, [0.5], warn=False)
    assert r.ap[0, 0] == 0.5 and (r.n_unknown_videos, r.n_ignored) == (1, 0)
    assert "counted as false positives" in r.notes[0] and "'zz'" in r.notes[0]
    r = evaluate(gt, pred, [0.5], ignore_unknown=True, warn=False)
    assert r.ap[0, 0] == 1.0 and (r.n_unknown_videos, r.n_ignored) == (1, 1) and 'left out' in r.notes[0]
    with pytest.warns(UserWarning, match='outside the ground truth'):
        evaluate(gt, pred, [0.5])
    # ranked below the hit it costs nothing: precision 1 at recall 1 comes first
    assert evaluate(gt, res(a=[(0, 4, 'x', .9)], zz=[(0, 4, 'x', .8)]), [0.5], warn=False).ap[0, 0] == 1.0


def test_unknown_labels_are_left_out_and_counted():
    r = evaluate(db(a=[(0, 4, 'x')]), res(a=[(0, 4, 'q', .9), (0, 4, 'x', .1)]), [0.5], warn=False)
    assert r.ap[0, 0] == 1.0 and (r.n_unknown_labels, r.n_ignored, r.n_unknown_videos) == (1, 1, 0)
    assert "'q'" in r.notes[0]


def test_labels_compare_as_values():
    gt = {'database': {'a': {'annotations': [{'segment': [0, 4], 'label': 3}, {'segment': [5, 9], 'label': 'jump'}]}}}
    r = evaluate(gt, res(a=[(0, 4, 3.0, .9), (5, 9, 'jump', .8)]), [0.5], warn=False)
    assert r.classes == ['3', 'jump'] and r.ap[:, 0].tolist() == [1.0, 1.0]
    # the string '3' spells class 3 (pal's head writes class names as strings): taken as it, with a note
    r = evaluate(gt, res(a=[(0, 4, '3', .9), (5, 9, 'jump', .8)]), [0.5], warn=False)
    assert r.ap[:, 0].tolist() == [1.0, 1.0] and r.n_unknown_labels == 0 and "'3' as 3" in r.notes[0]
    # ... but not when two classes spell the same
    gt2 = {'database': {'a': {'annotations': [{'segment': [0, 4], 'label': 3}, {'segment': [5, 9], 'label': '3'}]}}}
    r = evaluate(gt2, res(a=[(0, 4, 3.0, .9), (5, 9, '3', .8)]), [0.5], warn=False)
    assert r.classes == ['3', '3'] and r.ap[:, 0].tolist() == [1.0, 1.0] and not r.notes
    # a head trained on integer labels: its string class names score against the integer ground truth
    videos, gt_syn = synthetic_features(6, rows=(40, 60), seed=3)
    for v in gt_syn['database'].values():
        for a in v['annotations']: a['label'] = int(a['label'][-1])
    head, _ = train_head(videos, gt_syn, cfg=HeadConfig(epochs=2), device='cpu')
    assert head.classes == ['0', '1', '2']
    r = evaluate(gt_syn, predict(head, videos), [0.5], warn=False)
    assert r.classes == ['0', '1', '2'] and r.n_unknown_labels == 0 and 'as 0' in r.notes[0]
    assert evaluate(db(a=[(0, 4, 2.5)]), res(a=[(0, 4, 2.5, 1)]), [0.5]).average == 1.0


def test_subset_is_the_ground_truth_set():
    gt = db(a=[(0, 4, 'x')], b=[], c=[(0, 4, 'x')])
    for v, s in zip('abc', ['validation', 'validation', 'training']): gt['database'][v]['subset'] = s
    pred = res(a=[(0, 4, 'x', .7)], b=[(0, 4, 'x', .9)], c=[(0, 4, 'x', .8)])
    ap = lambda **kw: evaluate(gt, pred, [0.5], warn=False, **kw).ap[0, 0]
    # ranked b, c, a. Every video: b FP, c TP, a TP -> 1/2 * 2/3 + 1/2 * 2/3
    assert ap() == pytest.approx(2 / 3) and ap(ignore_unknown=True) == pytest.approx(2 / 3)
    # validation: c is outside (FP), b is a subset video without annotations (FP either way): 1/3, or 1/2 without c
    assert ap(subset='validation') == pytest.approx(1 / 3)
    assert ap(subset='validation', ignore_unknown=True) == pytest.approx(1 / 2)
    r = evaluate(gt, pred, [0.5], subset='validation', ignore_unknown=True, warn=False)
    assert (r.n_unknown_videos, r.n_ignored) == (1, 1) and "(subset 'validation')" in r.notes[0]
    with pytest.raises(EvalInputError, match=r"subsets found: \['training', 'validation'\]"):
        evaluate(gt, pred, subset='testing')
    with pytest.raises(EvalInputError, match="did you mean 'validation'"):
        evaluate(gt, pred, subset='Validation')
    with pytest.raises(EvalInputError, match="no video has a 'subset' field"):
        evaluate(db(a=[(0, 4, 'x')]), pred, subset='validation')
    gt['database']['a']['annotations'] = []
    with pytest.raises(EvalInputError, match="subset 'validation' has an annotation: nothing to score"):
        evaluate(gt, pred, subset='validation')


def test_ties_follow_the_official_order():
    # equal scores: the official code ranks by argsort()[::-1]; for two that is the reverse of file order,
    # so the false positive (second in the file) comes first: AP 1/2 (file order would give 1)
    gt = db(a=[(0, 4, 'x')])
    assert np.argsort([0.5, 0.5])[::-1].tolist() == [1, 0]
    assert evaluate(gt, res(a=[(0, 4, 'x', .5), (10, 14, 'x', .5)]), [0.5], warn=False).average == 0.5
    assert evaluate(gt, res(a=[(10, 14, 'x', .5), (0, 4, 'x', .5)]), [0.5], warn=False).average == 1.0
    # a prediction equally close to two ground truths takes the one argsort()[::-1] puts first (the later one)
    gt2 = {'v': np.array([[0., 4.], [4., 8.]])}
    _, tp = match_detections(gt2, ['v', 'v'], [[2, 6], [0, 4]], [.9, .8], [0.3])
    assert tp[0].tolist() == [True, True]  # [2, 6] took gt [4, 8], leaving [0, 4] free for the second
    scores = np.random.default_rng(1).integers(0, 3, 50).astype(float)
    order, _ = match_detections({}, ['v'] * 50, np.zeros((50, 2)), scores, [0.5])
    assert order.tolist() == np.argsort(scores)[::-1].tolist()


def test_zero_length_segments():
    assert segment_iou([5, 5], [[5, 5], [7, 7], [0, 10], [5, 6]])[0].tolist() == [1, 0, 0, 0]
    gt = db(a=[(0, 4, 'x'), (5, 5, 'x')])
    # hit, false ([7, 7]), hit ([5, 5] exactly): 1/2 + 1/2 * 2/3 (the official code's 0/0 = NaN would match [7, 7]: 1.0)
    r = evaluate(gt, res(a=[(0, 4, 'x', .9), (7, 7, 'x', .8), (5, 5, 'x', .7)]), [0.5], warn=False)
    assert r.ap[0, 0] == pytest.approx(5 / 6) and 'of zero length' in r.notes[0]
    # a zero-length prediction inside a real action is a false positive, as in the official code
    assert evaluate(db(a=[(0, 4, 'x')]), res(a=[(2, 2, 'x', .9), (0, 4, 'x', .8)]), [0.1], warn=False).average == 0.5


def _reference_ap(gt, preds, thr):
    "Independent re-statement of the official ActivityNet loop for one class and one threshold."
    preds = sorted(preds, key=lambda p: -p[3])
    lock = {v: [False] * len(g) for v, g in gt.items()}
    tp = []
    for v, s, e, _ in preds:
        hit = False
        if v in gt:
            ious = [max(0, min(e, ge) - max(s, gs)) / ((e - s) + (ge - gs) - max(0, min(e, ge) - max(s, gs))) for gs, ge in gt[v]]
            for k in np.argsort(ious)[::-1]:  # equal tIoUs in the official code's order
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


def _voc_ap(prec, rec):
    "VOC 2011 interpolated AP, written as the official code writes it (a right-to-left loop)."
    mprec, mrec = np.hstack([[0], prec, [0]]), np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 2, -1, -1): mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])


def _official_map(gt, pred, tious, subset=None):
    "The official eval_detection.py restated on plain lists (no pandas): mAP per threshold."
    index, G = {}, []  # label -> class index in first-seen order; ground-truth rows (video, start, end, class)
    for vid, v in gt['database'].items():
        if subset is not None and v['subset'] != subset: continue
        for a in v['annotations']:
            index.setdefault(a['label'], len(index)); G.append((vid, *a['segment'], index[a['label']]))
    P = [(vid, *p['segment'], index[p['label']], p['score']) for vid, ps in pred['results'].items() for p in ps]  # KeyError as there
    ap = np.zeros((len(tious), len(index)))
    for c in index.values():
        g, p = [r for r in G if r[3] == c], [r for r in P if r[3] == c]
        if not p: continue
        lock, tp = -np.ones((len(tious), len(g))), np.zeros((len(tious), len(p)))
        fp = np.zeros_like(tp)
        for idx, j in enumerate(np.array([r[4] for r in p]).argsort()[::-1]):
            vid, s, e = p[j][:3]
            rows = [k for k, r in enumerate(g) if r[0] == vid]
            if not rows: fp[:, idx] = 1; continue
            gs = np.array([g[k][1:3] for k in rows], dtype=float)
            inter = (np.minimum(e, gs[:, 1]) - np.maximum(s, gs[:, 0])).clip(0)
            iou = inter / ((gs[:, 1] - gs[:, 0]) + (e - s) - inter)
            for t, thr in enumerate(tious):
                for jj in iou.argsort()[::-1]:
                    if iou[jj] < thr: fp[t, idx] = 1; break
                    if lock[t, rows[jj]] >= 0: continue
                    tp[t, idx] = 1; lock[t, rows[jj]] = idx; break
                if tp[t, idx] == 0 and fp[t, idx] == 0: fp[t, idx] = 1
        ctp, cfp = tp.cumsum(1), fp.cumsum(1)
        for t in range(len(tious)): ap[t, c] = _voc_ap(ctp[t] / (ctp[t] + cfp[t]), ctp[t] / len(g))
    return ap.mean(1)


_vid = st.sampled_from(['v0', 'v1', 'v2', 'v3'])


@settings(max_examples=150, deadline=None)
@given(subsets=st.lists(st.sampled_from(['validation', 'training']), min_size=4, max_size=4),
       anns=st.lists(st.tuples(_vid, seg, st.sampled_from(['x', 'y'])), min_size=1, max_size=8),
       preds=st.lists(st.tuples(st.sampled_from(['v0', 'v1', 'v2', 'v3', 'u0', 'u1']), seg, st.sampled_from(['x', 'y']),
                                st.sampled_from([0.2, 0.4, 0.6, 0.8])), max_size=14),  # few score values: many ties
       subset=st.sampled_from([None, 'validation']))
def test_evaluate_equals_the_official_code(subsets, anns, preds, subset):
    "Random cases with unknown videos, subsets, empty videos and tied scores and tIoUs: pal == the official loop."
    gt = {'database': {v: {'subset': s, 'annotations': []} for v, s in zip(['v0', 'v1', 'v2', 'v3'], subsets)}}
    for v, (s, e), l in anns: gt['database'][v]['annotations'].append({'segment': [s, e], 'label': l})
    chosen = {l for v, x in gt['database'].items() if subset in (None, x['subset']) for l in (a['label'] for a in x['annotations'])}
    pred = res(**{v: [] for v, *_ in preds})
    for v, (s, e), l, x in preds:
        if l in chosen: pred['results'][v].append({'segment': [s, e], 'label': l, 'score': x})  # the official code has no other labels
    tious = [0.1, 0.3, 0.5, 0.7]
    want = _official_map(gt, pred, tious, subset) if chosen else None
    try: got = evaluate(gt, pred, tious, subset=subset, warn=False).mAP
    except EvalInputError as e:  # nothing to score: no annotation, or no prediction on a ground-truth video
        assert want is None or not want.any(), (str(e), want)
        return
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


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
    cmd = [str(script)] if script.is_file() else [sys.executable, '-c', 'import sys; from pal.evaluate import eval_cli; sys.exit(eval_cli())']
    (files / 'bad.json').write_text('not json')
    bad = subprocess.run(cmd + ['--gt', str(files / 'bad.json'), '--pred', str(files / 'pred.json')],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and 'bad.json' in bad.stderr


def _cli(tmp_path, capsys, gt, pred, *extra):
    "Run pal-eval on two JSON values (or raw text); returns (exit status, stdout, stderr)."
    for name, d in (('gt.json', gt), ('pred.json', pred)):
        (tmp_path / name).write_text(d if isinstance(d, str) else json.dumps(d))
    rc = eval_cli(['--gt', str(tmp_path / 'gt.json'), '--pred', str(tmp_path / 'pred.json'), '--tiou', '0.5', '--json', *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eval_cli_unknown_videos_counted_either_way(tmp_path, capsys):
    gt, pred = db(a=[(0, 4, 'x')]), res(a=[(0, 4, 'x', .8)], zz=[(0, 4, 'x', .9)])
    rc, out, err = _cli(tmp_path, capsys, gt, pred)
    assert rc == 0 and json.loads(out)['average'] == 0.5
    assert "warning: 1 prediction on 1 video outside the ground truth: counted as false positives" in err
    rc, out, err = _cli(tmp_path, capsys, gt, pred, '--ignore-unknown')
    assert rc == 0 and json.loads(out)['average'] == 1.0 and '1 prediction on 1 video outside the ground truth: left out' in err
    rc, out, err = _cli(tmp_path, capsys, gt, res(a=[(0, 4, 'x', .8)]))
    assert rc == 0 and err == ''


def test_eval_cli_refuses_what_cannot_be_scored(tmp_path, capsys):
    gt = db(a=[(0, 4, 'x')], b=[(1, 2, 'x')])
    # a ground truth without any annotation
    rc, out, err = _cli(tmp_path, capsys, db(a=[], b=[]), res(a=[(0, 4, 'x', .8)]))
    assert rc == 1 and out == '' and 'gt.json' in err and 'none of its 2 videos has an annotation: nothing to score' in err
    # every prediction on a video the ground truth does not have: the ids, and the likely cause
    rc, out, err = _cli(tmp_path, capsys, gt, res(v_a=[(0, 4, 'x', .8)], v_b=[(1, 2, 'x', .7)]))
    assert rc == 1 and out == '' and 'pred.json' in err and "'v_a', 'v_b'" in err and "'v_' prefix" in err
    # every label unknown: label ids against names
    rc, out, err = _cli(tmp_path, capsys, gt, res(a=[(0, 4, 0, .8)]))
    assert rc == 1 and 'no predicted label is a class' in err and 'label ids against label names' in err
    # a subset that does not exist, with the near miss named
    gt_s = {'database': {'a': {'subset': 'Validation', 'annotations': [{'segment': [0, 4], 'label': 'x'}]}}}
    rc, out, err = _cli(tmp_path, capsys, gt_s, res(a=[(0, 4, 'x', .8)]), '--subset', 'validation')
    assert rc == 1 and "did you mean 'Validation'" in err
    # no predictions at all is a score (0), with a warning
    rc, out, err = _cli(tmp_path, capsys, gt, res())
    assert rc == 0 and json.loads(out)['average'] == 0.0 and 'warning: no predictions at all' in err


def test_eval_cli_labels(tmp_path, capsys):
    gt = {'database': {'a': {'annotations': [{'segment': [0, 4], 'label': 3}]}}}
    rc, out, err = _cli(tmp_path, capsys, gt, {'results': {'a': [{'segment': [0, 4], 'label': 3.0, 'score': 1}]}})
    assert rc == 0 and json.loads(out)['average'] == 1.0  # 3.0 is label 3, as in the official code
    for bad in (None, [3], {'id': 3}, True):
        rc, out, err = _cli(tmp_path, capsys, gt, {'results': {'a': [{'segment': [0, 4], 'label': bad, 'score': 1}]}})
        assert rc == 1 and "pred.json: video 'a' prediction 0: 'label' must be a string or a number" in err, bad
        rc, out, err = _cli(tmp_path, capsys, {'database': {'a': {'annotations': [{'segment': [0, 4], 'label': bad}]}}}, res())
        assert rc == 1 and "gt.json: video 'a' annotation 0: 'label' must be a string or a number" in err, bad


def test_eval_cli_deeply_nested_json(tmp_path, capsys):
    deep = '[' * 100_000 + ']' * 100_000
    rc, out, err = _cli(tmp_path, capsys, db(a=[(0, 4, 'x')]), deep)
    assert rc == 1 and 'pred.json: JSON nested too deeply' in err and 'Traceback' not in err
    rc, out, err = _cli(tmp_path, capsys, '{"database": ' * 100_000 + '{}' + '}' * 100_000, res())
    assert rc == 1 and 'gt.json: JSON nested too deeply' in err
    # nested just deep enough to load: the error message stays short
    rc, out, err = _cli(tmp_path, capsys, db(a=[(0, 4, 'x')]), {'results': {'a': [{'segment': [0, 4], 'label': json.loads('[' * 500 + ']' * 500), 'score': 1}]}})
    assert rc == 1 and "'label' must be" in err and len(err) < 500


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


def test_soft_nms_min_score_zero_outputs_each_candidate_once():
    # 30 near-duplicates, sigma 0.1: most decay to exactly 0.0 (float underflow); each must come out once, not re-emitted
    segs = torch.stack([torch.linspace(0, 0.29, 30), torch.linspace(0, 0.29, 30) + 10], 1)
    s, sc, lb = soft_nms(segs, torch.linspace(1, 0.5, 30), sigma=0.1, min_score=0)
    assert len(s) == 30 and len(torch.unique(s, dim=0)) == 30 and (sc == 0).sum() > 10
    assert sorted(s[:, 0].tolist()) == sorted(segs[:, 0].tolist()) and bool((sc[:-1] >= sc[1:]).all())
    assert sc[0] == 1 and len(soft_nms(segs, torch.linspace(1, 0.5, 30), sigma=0.1, min_score=-1)[0]) == 30
    # the same with two classes and a cap: still every output distinct
    s, sc, lb = soft_nms(segs, torch.linspace(1, 0.5, 30), torch.arange(30) % 2, sigma=0.1, min_score=0, max_segs=20)
    assert len(s) == 20 and len({(tuple(x), int(l)) for x, l in zip(s.tolist(), lb.tolist())}) == 20
    for bad in (0, -0.5, float('nan')):
        with pytest.raises(ValueError, match='sigma must be > 0'):
            soft_nms(segs, torch.ones(30), sigma=bad)


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


def test_train_head_reads_the_ground_truth_once(monkeypatch):
    "A video named like an ActivityNet top-level key ('database') is just a video: train_head unwraps the ground truth once, not again per video."
    import pal.evaluate as ev
    made = []
    class Recording(ev.LocDataset):
        def __init__(self, *a, **k): super().__init__(*a, **k); made.append(self)
    monkeypatch.setattr(ev, 'LocDataset', Recording)
    v = FeatureVideo('v', np.zeros((10, 2)), np.arange(10) * 2.0 + 1.0)
    w = FeatureVideo('database', np.ones((10, 2)), np.arange(10) * 2.0 + 1.0)
    gt = db(v=[(2.0, 9.0, 'a')], database=[(4.0, 12.0, 'b')])
    train_head([v, w], gt, cfg=HeadConfig(epochs=1), device='cpu')
    (cls_v, _), (cls_w, _) = made[0].targets
    assert cls_v[:, 0].sum() == 4 and cls_v[:, 1].sum() == 0  # rows at 3, 5, 7, 9 s: class a
    assert cls_w[:, 1].sum() == 4 and cls_w[:, 0].sum() == 0  # rows at 5, 7, 9, 11 s: class b


def test_feature_video_checks():
    with pytest.raises(ValueError, match='increase'):
        FeatureVideo('x', np.zeros((3, 2)), [0, 2, 1])
    with pytest.raises(ValueError, match='x'):
        FeatureVideo('x', np.zeros((3, 2)), [0, 1])


def test_uneven_rows_convert_by_their_own_times():
    "Rows of a variable-frame-rate video: seconds <-> rows interpolate between the rows' times, not one median stride."
    t = np.array([0.25, 0.75, 1.25, 1.75, 3.0, 5.0])  # 0.5 s apart, then 1.25 and 2 s
    v = FeatureVideo('vfr', np.zeros((6, 2)), t, starts=[0, .5, 1, 1.5, 2, 4], ends=[.5, 1, 1.5, 2, 4, 6])
    assert v.duration == 6.0 and v.stride == 0.5  # the last row's end; the median step
    np.testing.assert_allclose(v.to_rows(t), np.arange(6))
    np.testing.assert_allclose(v.to_rows([0.0, 1.5, 2.375, 4.0, 6.0]), [-0.5, 2.5, 3.5, 4.5, 5.5])  # outside: first / last step
    x = np.linspace(-2, 8, 41)
    np.testing.assert_allclose(v.to_seconds(v.to_rows(x)), x, atol=1e-12)
    np.testing.assert_allclose(v.to_rows(v.to_seconds(x)), x, atol=1e-12)
    # targets in rows: the action [1.5, 4.0] s spans rows 2.5 .. 4.5 (a median stride would say 2.5 .. 7.5)
    cls, reg = make_targets(v, [[1.5, 4.0]], [1], 2)
    assert cls[:, 1].nonzero()[0].tolist() == [3, 4]
    np.testing.assert_allclose(reg[[3, 4]], [[0.5, 1.5], [1.5, 0.5]])
    # decoding undoes it: a head that says "from 1.5 rows before to 0.5 after" at row 4 gives [1.5, 4.0] s
    class Stub(torch.nn.Module):
        classes = ['a', 'b']
        def __init__(self): super().__init__(); self.mean = torch.nn.Parameter(torch.zeros(1))
        def forward(self, x):
            logits = torch.full((1, 2, 6), -20.0); logits[0, 1, 4] = 20.0
            return logits, torch.tensor([[1.5, 0.5]] * 6).T[None]
    out = decode_video(Stub(), v, pre_thresh=0.5)
    assert [d['label'] for d in out] == ['b'] and out[0]['segment'] == [1.5, 4.0]
    even = FeatureVideo('even', np.zeros((6, 2)), np.arange(6) * 0.5 + 0.25)  # evenly spaced: the stride rule, unchanged
    np.testing.assert_allclose(even.to_rows([0.0, 1.0, 4.0]), (np.array([0.0, 1.0, 4.0]) - 0.25) / 0.5)
    with pytest.raises(ValueError, match='starts'): FeatureVideo('x', np.zeros((2, 2)), [0, 1], starts=[0])


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
    assert f['v1'].starts is None and f['v1'].ends is None  # an older manifest: centres only
    man['videos']['v1'].update(duration=None, starts=[0.25, 0.75, 1.5, 1.75], ends=[0.75, 1.5, 1.75, 2.25], times=[0.5, 1.0, 1.6, 2.0])
    (tmp_path / 'manifest.json').write_text(json.dumps(man))
    g = load_features(tmp_path)['v1']
    assert g.ends.tolist() == [0.75, 1.5, 1.75, 2.25] and g.to_rows(1.3) == pytest.approx(1.5)  # uneven: by the rows' own times
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
