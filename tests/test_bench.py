"Tests for pal.bench / pal.benchrun: the tiny pipeline end to end (files, values, caching, the protocol's splits, --jobs), configs, keys and the statistics."
import json, shutil
from pathlib import Path

import numpy as np
import pytest, torch

from pal.bench import (VARIANTS, bench_config, split_videos, protocol_split, paired_diffs, t_quantile, bench_cli, make_train_config,
                       run_key, summarize, results_table)  # the last five moved to pal.benchrun: still importable from pal.bench
from pal.benchrun import variant_table

ROOT = Path(__file__).resolve().parents[1]
FOUR = ('random', 'video', 'pal', 'supervised')

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


def _run(d: Path, *args) -> dict:
    bench_cli(['--preset', 'tiny', '--out', str(d), '--no-progress', *args])
    return json.loads((d / 'results.json').read_text())


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "The tiny preset on its test split with 2 seeds (sequential), the same command again, and with --jobs 2 in a fresh cache."
    d = tmp_path_factory.mktemp('bench')
    args = ['--split', 'test', '--seeds', '0', '1']
    first = _run(d / 'out', '--cache', str(d / 'cache'), '--export-checkpoints', str(d / 'ck'), *args)
    mtimes = {p: p.stat().st_mtime_ns for p in (d / 'cache' / 'bench').glob('*/checkpoint.pt')}
    second = _run(d / 'again', '--cache', str(d / 'cache'), *args)
    shutil.copytree(d / 'cache' / 'toybench', d / 'cache2' / 'toybench')  # the same videos (H.264 via PyAV is not bit-reproducible), new encoders
    par = _run(d / 'par', '--cache', str(d / 'cache2'), '--jobs', '2', *args)
    return d, first, second, par, mtimes


def test_tiny_bench_writes_table_chart_and_json(tiny):
    d, res, _, _, _ = tiny
    out = d / 'out'
    assert (out / 'chart.png').stat().st_size > 1000 and (out / 'chart.png').read_bytes()[:4] == b'\x89PNG'
    assert [(r['method'], r['seed']) for r in res['rows']] == [(m, s) for s in (0, 1) for m in FOUR]
    assert res['tiou'] == [0.3, 0.4, 0.5, 0.6, 0.7] and res['split'] == 'test' and (res['n_fit'], res['n_eval']) == (4, 2)
    for r in res['rows']:
        assert len(r['mAP']) == 5 and all(0 <= m <= 1 for m in r['mAP'])
        assert r['average'] == pytest.approx(np.mean(r['mAP']))
        assert len(r['heads']) == 2 and r['average'] == pytest.approx(np.mean(r['heads']))  # mAP averaged over two heads
        if r['method'] != 'random': assert len(r['pretrain']['loss']) == 2 and np.isfinite(r['pretrain']['final_loss'])
        assert len(r['oracle_mAP']) == 5 and r['oracle_average'] == pytest.approx(np.mean(r['oracle_mAP']))
        assert 0 <= r['identity_share'] <= 1 and 0 <= r['action_probe'] <= 1 and 0 <= r['class_probe'] <= 1
        assert len(r['boundary_curve']) == 5
    for m in FOUR:
        a = np.array([r['mAP'] + [r['average']] for r in res['rows'] if r['method'] == m])
        s = res['summary'][m]
        assert s['mean'] == pytest.approx(a.mean(0).tolist()) and s['std'] == pytest.approx(a.std(0, ddof=1).tolist())
        assert s['class_probe_mean'] == pytest.approx(np.mean([r['class_probe'] for r in res['rows'] if r['method'] == m]))
    # the primary comparison, declared in the config: pal - video, paired by seed, with its t-interval
    by = {(r['method'], r['seed']): 100 * r['average'] for r in res['rows']}
    d01 = [by['pal', s] - by['video', s] for s in (0, 1)]
    p = res['primary']
    assert res['config']['primary'] == ['pal', 'video'] and p['diffs'] == pytest.approx(np.round(d01, 2)) and p['n'] == 2
    half = 12.706 * np.std(d01, ddof=1) / np.sqrt(2)
    assert p['ci95'] == pytest.approx([np.mean(d01) - half, np.mean(d01) + half], abs=1e-2)
    table = (out / 'table.md').read_text()
    assert table == results_table(res) and table.count('\n| ') == 4 and 'test split' in table and 'Primary comparison' in table
    m = res['machine']
    assert {'commit', 'torch', 'torchvision', 'av', 'numpy', 'python', 'cpu_model', 'cpu_flags', 'torch_threads', 'load_avg'} <= set(m)
    assert m['torch_threads'] == 1 and m['numpy'] == np.__version__ and res['timing']['wall'] > 0 and res['jobs'] == 1


def test_tiny_bench_reuses_its_cache_and_reproduces(tiny):
    d, first, second, _, mtimes = tiny
    assert len(mtimes) == 8  # four encoders, two seeds
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # nothing retrained
    assert [r['mAP'] for r in second['rows']] == [r['mAP'] for r in first['rows']]  # same heads, same numbers
    assert second['timing']['pretrain'] < first['timing']['pretrain']


def test_jobs_give_the_sequential_results(tiny):
    "Two seeds in two spawned one-thread processes, encoders trained again: every number as in the sequential run."
    _, first, _, par, _ = tiny
    assert par['jobs'] == 2 and [(r['method'], r['seed']) for r in par['rows']] == [(r['method'], r['seed']) for r in first['rows']]
    keys = ('mAP', 'oracle_mAP', 'heads', 'identity_share', 'action_probe', 'class_probe', 'boundary_contrast')
    for a, b in zip(first['rows'], par['rows']):
        for k in keys: assert np.asarray(b[k]) == pytest.approx(np.asarray(a[k]), rel=1e-6, abs=1e-9), (a['method'], a['seed'], k)
        if a['pretrain']: assert b['pretrain']['loss'] == pytest.approx(a['pretrain']['loss'], rel=1e-5)


def test_validation_split_never_reads_test_videos(tmp_path):
    "--split val: heads fit on 3 of the 4 labelled training videos and scored on the 4th; the supervised encoder learns from the 3 only."
    from pal.features import load_model
    from pal.checkpoint import load_checkpoint
    res = _run(tmp_path / 'out', '--cache', str(tmp_path / 'cache'), '--methods', 'random', 'supervised')
    assert res['split'] == 'val' and (res['n_fit'], res['n_eval']) == (3, 1)
    names = [f'train_{i:04d}' for i in range(4)]
    fit, val = split_videos(names)
    assert res['eval_videos'] == val and not set(val) & set(fit)
    runs = list((tmp_path / 'cache' / 'bench').iterdir())
    assert runs and all(sorted(p.name for p in (r / 'features').iterdir()) == ['train'] for r in runs)  # test videos never extracted
    sup = next(r for r in res['rows'] if r['method'] == 'supervised')
    ck = load_checkpoint(sup['checkpoint'])
    assert ck['kind'] == 'supervised' and ck['trained_on'].startswith('3 labelled videos')
    enc, cfg, info = load_model(sup['checkpoint'])
    assert info['kind'] == 'supervised' and cfg.steps == 2


def test_exported_checkpoints_load(tiny):
    from pal.features import load_model
    d = tiny[0]
    for kind in FOUR:
        enc, cfg, info = load_model(d / 'ck' / f'{kind}.pt')
        assert info['kind'] == kind and cfg.paste.clip_len == 4 and cfg.steps == 2


def test_protocol_split_is_fixed_and_disjoint():
    names = [f'train_{i:04d}' for i in range(96)]
    fit, val = split_videos(names)
    assert len(val) == 24 and len(fit) == 72 and sorted(fit + val) == names
    assert split_videos(names[::-1]) == (fit, val) and split_videos(names, seed=1)[1] != val
    gt = {'database': {n: {'annotations': []} for n in names}}
    a, b = protocol_split(bench_config('small'), gt, {'database': {'test_0000': {}}})
    assert sorted(a['database']) == fit and sorted(b['database']) == val
    a, b = protocol_split(bench_config('small', split='test'), gt, {'database': {'test_0000': {}}})
    assert a is gt and list(b['database']) == ['test_0000']
    with pytest.raises(ValueError, match='split'): bench_config('small', split='train')
    with pytest.raises(ValueError, match='cannot hold out'): split_videos(['a'])


def test_train_configs_differ_only_by_method_and_variant():
    cfg = bench_config('small')
    assert cfg.methods == FOUR and len(cfg.seeds) >= 5 and cfg.split == 'val' and cfg.primary == ('pal', 'video')
    a, b = (make_train_config(cfg, m, 1, 'v', 'o').to_dict() for m in ('video', 'pal'))
    assert {k for k in a if a[k] != b[k]} == {'method'}
    assert make_train_config(cfg, 'supervised', 1, 'v', 'o').to_dict() == b  # same backbone, init, budget and augmentation as PAL
    c = make_train_config(cfg, 'pal-clip', 1, 'v', 'o')
    assert c.mode == 'clip' and c.seed == 1 and c.steps == cfg.train['steps']
    s = make_train_config(cfg, 'pal-same', 0, 'v', 'o')
    assert s.paste.same_region and s.align == 'pooled'  # same region, pooled: apart from pal-dense's bin-by-bin alignment
    assert run_key(make_train_config(cfg, 'pal', 0, 'x', 'y'), 'pal', 't') == run_key(make_train_config(cfg, 'pal', 0, 'z', 'w'), 'pal', 't')
    assert run_key(make_train_config(cfg, 'pal', 0, 'x', 'y'), 'pal', 't') != run_key(make_train_config(cfg, 'pal', 0, 'x', 'y'), 'pal', 'u')
    assert bench_config('small', train={'steps': 7}).train['paste']['clip_len'] == 4  # merged, not replaced
    with pytest.raises(ValueError, match='unknown encoder'): bench_config('small', methods=['nope'])
    assert set(VARIANTS) >= {'random', 'video', 'pal', 'supervised', 'pal-same', 'pal-dense'}
    for name in VARIANTS: make_train_config(cfg, name, 0, 'v', 'o')  # every variant is a valid TrainConfig


def test_t_interval_matches_students_table():
    assert [round(t_quantile(0.975, df), 3) for df in (1, 2, 4, 9, 30)] == pytest.approx([12.706, 4.303, 2.776, 2.262, 2.042], abs=2e-3)
    rows = [dict(method=m, seed=s, average=v) for m, vals in (('a', [.10, .12, .11, .15, .13]), ('b', [.12, .15, .12, .18, .13]))
            for s, v in enumerate(vals)]
    d = paired_diffs({'rows': rows}, ref='a')['b']
    diffs = np.array([2, 3, 1, 3, 0.0])
    assert d['diffs'] == pytest.approx(diffs) and d['mean'] == pytest.approx(1.8) and d['n'] == 5
    h = 2.776445 * diffs.std(ddof=1) / np.sqrt(5)
    assert d['ci95'] == pytest.approx([1.8 - h, 1.8 + h], abs=1e-3)


def test_summary_mean_and_std():
    rows = [dict(method='a', seed=s, mAP=[0.1 * s, 0.2], average=0.05 * s + 0.1) for s in (1, 2, 3)]
    s = summarize(rows, ['a', 'b'])
    assert list(s) == ['a']
    assert s['a']['mean'] == pytest.approx([0.2, 0.2, 0.2]) and s['a']['std'] == pytest.approx([0.1, 0.0, 0.05])
    t = results_table(dict(tiou=[0.3, 0.5], summary=s, config=dict(toy={})))
    assert '| a | 20.0 ± 10.0 | 20.0 ± 0.0 | 20.0 ± 5.0 |' in t and 'over 3 seeds' in t


def _stored(name):
    p = ROOT / 'benchmarks' / 'results' / name / 'results.json'
    if not p.is_file(): pytest.skip(f'no stored benchmark results {name}')
    return json.loads(p.read_text())


@pytest.mark.parametrize('name', ['val-v2', 'test-v2'])
def test_shipped_results_are_consistent(name):
    res = _stored(name)
    assert res['preset'] == 'small' and len(res['config']['seeds']) >= 5 and res['split'] == name.split('-')[0]
    for m, s in res['summary'].items():
        a = np.array([r['mAP'] + [r['average']] for r in res['rows'] if r['method'] == m])
        assert s['mean'] == pytest.approx(a.mean(0).tolist()) and s['std'] == pytest.approx(a.std(0, ddof=1).tolist())
    assert (ROOT / 'benchmarks' / 'results' / name / 'table.md').read_text() == results_table(res)
    want = paired_diffs(res, 'video')['pal']
    assert res['primary']['diffs'] == pytest.approx(want['diffs']) and res['primary']['ci95'] == pytest.approx(want['ci95'])
    assert variant_table(res).count('\n| ') == len(res['summary'])


def test_cache_keys_do_not_drift():
    "The keys of the toy data and encoders behind benchmarks/results/test-v2 (~/.cache/pal): a new TrainConfig field that does not change the weights must not retrain them."
    from pal.benchrun import make_toy_config
    cfg = bench_config('small')
    toy = make_toy_config(cfg).key()
    assert toy == '799c27735978'
    assert [run_key(make_train_config(cfg, m, 0, 'v', 'o'), m, toy) for m in ('video', 'pal')] == ['a36fa13082', '25a29a5648']
