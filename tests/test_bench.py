"Tests for pal.bench: the tiny pipeline end to end (files, values, caching), configs, keys and the summary maths."
import json
from pathlib import Path

import numpy as np
import pytest, torch

from pal.bench import (VARIANTS, bench_cli, bench_config, make_train_config, run_key, summarize, results_table)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "One tiny pal-bench run (3 + 3 + 2 toy videos, 2 pretraining steps, 1 seed), then the same command again."
    d = tmp_path_factory.mktemp('bench')
    argv = ['--preset', 'tiny', '--out', str(d / 'out'), '--cache', str(d / 'cache'), '--no-progress',
            '--export-checkpoints', str(d / 'ck')]
    bench_cli(argv)
    first = json.loads((d / 'out' / 'results.json').read_text())
    mtimes = {p: p.stat().st_mtime_ns for p in (d / 'cache' / 'bench').glob('*/checkpoint.pt')}
    bench_cli(argv)
    second = json.loads((d / 'out' / 'results.json').read_text())
    return d, first, second, mtimes


def test_tiny_bench_writes_table_chart_and_json(tiny):
    d, res, _, _ = tiny
    out = d / 'out'
    assert (out / 'chart.png').stat().st_size > 1000 and (out / 'chart.png').read_bytes()[:4] == b'\x89PNG'
    assert [(r['method'], r['seed']) for r in res['rows']] == [('random', 0), ('video', 0), ('pal', 0)]
    assert res['tiou'] == [0.3, 0.4, 0.5, 0.6, 0.7]
    for r in res['rows']:
        assert len(r['mAP']) == 5 and all(0 <= m <= 1 for m in r['mAP'])
        assert r['average'] == pytest.approx(np.mean(r['mAP']))
        assert len(r['heads']) == 2 and r['average'] == pytest.approx(np.mean(r['heads']))  # mAP averaged over two heads
        if r['method'] != 'random': assert len(r['pretrain']['loss']) == 2 and np.isfinite(r['pretrain']['final_loss'])
        assert len(r['oracle_mAP']) == 5 and r['oracle_average'] == pytest.approx(np.mean(r['oracle_mAP']))
        assert r['oracle_average'] >= r['average'] - 1e-9  # these detections overlap one ground truth each: right classes only help
    for r in res['rows']:  # one seed: the summary is the row itself, std 0
        s = res['summary'][r['method']]
        assert s['mean'] == pytest.approx(r['mAP'] + [r['average']]) and s['std'] == [0.0] * 6
    table = (out / 'table.md').read_text()
    assert table.count('\n| ') == 3 and '| pal | ' in table and f"{100 * res['rows'][2]['average']:.1f} ± 0.0 |" in table
    assert res['timing']['wall'] > 0 and res['machine']['cpus'] >= 1


def test_tiny_bench_reuses_its_cache_and_reproduces(tiny):
    d, first, second, mtimes = tiny
    assert len(mtimes) == 3  # random, video, pal
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # nothing retrained
    assert [r['mAP'] for r in second['rows']] == [r['mAP'] for r in first['rows']]  # same heads, same numbers
    assert second['timing']['pretrain'] < first['timing']['pretrain']


def test_exported_checkpoints_load(tiny):
    from pal.features import load_model
    d = tiny[0]
    for kind in ('random', 'video', 'pal'):
        enc, cfg, info = load_model(d / 'ck' / f'{kind}.pt')
        assert info['kind'] == kind and cfg.paste.clip_len == 4 and cfg.steps == 2


def test_train_configs_differ_only_by_method_and_variant():
    cfg = bench_config('small')
    a, b = (make_train_config(cfg, m, 1, 'v', 'o').to_dict() for m in ('video', 'pal'))
    assert {k for k in a if a[k] != b[k]} == {'method'}
    c = make_train_config(cfg, 'pal-clip', 1, 'v', 'o')
    assert c.mode == 'clip' and c.seed == 1 and c.steps == cfg.train['steps']
    assert run_key(make_train_config(cfg, 'pal', 0, 'x', 'y'), 'pal', 't') == run_key(make_train_config(cfg, 'pal', 0, 'z', 'w'), 'pal', 't')
    assert run_key(make_train_config(cfg, 'pal', 0, 'x', 'y'), 'pal', 't') != run_key(make_train_config(cfg, 'pal', 0, 'x', 'y'), 'pal', 'u')
    assert bench_config('small', train={'steps': 7}).train['paste']['clip_len'] == 4  # merged, not replaced
    with pytest.raises(ValueError, match='unknown encoder'): bench_config('small', methods=['nope'])
    assert set(VARIANTS) >= {'random', 'video', 'pal'}


def test_cache_keys_do_not_drift():
    "The keys of the encoders behind benchmarks/results (in ~/.cache/pal/bench): a new TrainConfig field that does not change the weights must not retrain them."
    cfg = bench_config('small')
    toy = '65a1d5b076ec'  # the small toy benchmark's key
    assert [run_key(make_train_config(cfg, m, 0, 'v', 'o'), m, toy) for m in ('video', 'pal')] == ['6f3eef8e56', '067ede0dfd']


def test_summary_mean_and_std():
    rows = [dict(method='a', seed=s, mAP=[0.1 * s, 0.2], average=0.05 * s + 0.1) for s in (1, 2, 3)]
    s = summarize(rows, ['a', 'b'])
    assert list(s) == ['a']
    assert s['a']['mean'] == pytest.approx([0.2, 0.2, 0.2]) and s['a']['std'] == pytest.approx([0.1, 0.0, 0.05])
    t = results_table(dict(tiou=[0.3, 0.5], summary=s, config=dict(toy={})))
    assert '| a | 20.0 ± 10.0 | 20.0 ± 0.0 | 20.0 ± 5.0 |' in t and 'over 3 seeds' in t


def test_shipped_results_are_consistent():
    p = ROOT / 'benchmarks' / 'results' / 'small' / 'results.json'
    if not p.is_file(): pytest.skip('no shipped benchmark results')
    res = json.loads(p.read_text())
    assert res['preset'] == 'small' and len(res['config']['seeds']) >= 3
    for m, s in res['summary'].items():
        a = np.array([r['mAP'] + [r['average']] for r in res['rows'] if r['method'] == m])
        assert s['mean'] == pytest.approx(a.mean(0).tolist()) and s['std'] == pytest.approx(a.std(0, ddof=1).tolist())
    assert (p.parent / 'table.md').read_text() == results_table(res)
