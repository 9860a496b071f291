"pal.train / pal.pretrain (fit, pal-pretrain) / pal.data / pal.checkpoint: short runs of both methods, exact resume, atomic checkpoints, bad files, refusals, NaN guard."
import csv, json, math, os, shutil, signal, subprocess, sys
from pathlib import Path

import pytest
import torch

import pal.train as T
import pal.pretrain as P  # fit looks up make_inputs and build_objective here: the tests patch them in this module
from pal.samples import sample_dir, write_video
from pal.train import (LOG_COLUMNS, TrainConfig, TrainingError, batch_videos, extended_lr_factor, fit, load_checkpoint,
                       load_encoder, pretrain_cli, read_log, save_checkpoint)

# small and fast: tiny backbone, 32 px, 4 clips of 4 frames, 4 sources per step
FAST = ['--device', 'cpu', '--batch-size', '4', '--size', '32', '--n-clips', '4', '--clip-len', '4',
        '--warmup-steps', '2', '--workers', '0']


def cli(out, *args, videos=None):
    "Run pal-pretrain in this process; returns its exit code (0 when it returns normally)."
    try: pretrain_cli(['--videos', str(videos or sample_dir()), '--out', str(out), *FAST, *args])
    except SystemExit as e: return e.code if isinstance(e.code, int) else 1
    return 0


def weights(out):
    ck = load_checkpoint(Path(out) / 'checkpoint.pt')
    return {**{'encoder.' + k: v for k, v in ck['encoder'].items()}, **{'head.' + k: v for k, v in ck['head'].items()}}


@pytest.mark.parametrize('method', ['pal', 'video', 'pal-moco'])
def test_short_run(tmp_path, method, capsys):
    out = tmp_path / 'run'
    moco = ['--moco', '--queue-size', '16'] if method.endswith('moco') else []
    method = method.removesuffix('-moco')
    assert cli(out, '--method', method, '--steps', '3', '--ckpt-every', '2', *moco) == 0
    printed = capsys.readouterr().out
    for name in ('checkpoint.pt', 'config.json', 'log.csv', 'loss.png', 'sample.png'):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert str(out / name) in printed  # says where it wrote it
    # log: one row per step, the promised columns, finite values, the warm-up/cosine schedule
    with open(out / 'log.csv') as f: assert tuple(next(csv.reader(f))) == LOG_COLUMNS
    rows = read_log(out / 'log.csv')
    assert [r['step'] for r in rows] == [1, 2, 3]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in LOG_COLUMNS)
        assert 0 < r['loss'] < 10 and 0 <= r['top1'] <= 1 and -1 <= r['neg_sim'] <= 1 and -1 <= r['pos_sim'] <= 1
        assert r['step_time'] >= r['data_time'] >= 0
    cfg = TrainConfig.load(out / 'config.json')
    assert [r['lr'] for r in rows] == pytest.approx([cfg.lr * T.lr_factor(s, 2, 3) for s in range(3)], rel=1e-5)
    # config round trip and checkpoint contents
    assert cfg.method == method and cfg.steps == 3 and cfg.paste.clip_len == 4 and cfg.augment.size == (32, 32)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    ck = load_checkpoint(out / 'checkpoint.pt')
    assert {'encoder', 'head', 'optimizer', 'scheduler', 'step', 'rng', 'config', 'videos'} <= set(ck)
    assert ck['step'] == 3 and ck['scheduler']['last_epoch'] == 3 and TrainConfig.from_dict(ck['config']) == cfg
    assert len(ck['videos']) == 7 and ck['optimizer']['state']  # momentum buffers are saved
    if moco: assert ck['moco']['filled'] == 16 and ck['moco']['queue'].abs().sum() > 0  # 3 steps x 8 keys fill the queue
    else: assert ck['moco'] is None
    # the saved encoder works
    enc = load_encoder(out / 'checkpoint.pt')
    feats = enc(torch.zeros(1, 3, 8, 32, 32))
    assert feats.shape == (1, enc.out_dim, 2) and torch.isfinite(feats).all()


def test_resume_is_exact(tmp_path, monkeypatch):
    "4 steps straight == 2 steps, Ctrl-C, and a resume (here with decoding in 2 workers instead of a cache)."
    assert cli(tmp_path / 'a', '--steps', '4', '--ckpt-every', '4') == 0
    make_inputs = P.make_inputs
    def ctrl_c_at_2(batch, *a, **k):
        if batch.keys[0][0] == 2: signal.raise_signal(signal.SIGINT)  # Ctrl-C: finish this step, save, stop
        return make_inputs(batch, *a, **k)
    monkeypatch.setattr(P, 'make_inputs', ctrl_c_at_2)
    b = tmp_path / 'b'
    assert cli(b, '--steps', '4', '--ckpt-every', '4', '--cache-mb', '0', '--workers', '2') == 130
    assert load_checkpoint(b / 'checkpoint.pt')['step'] == 2
    assert [r['step'] for r in read_log(b / 'log.csv')] == [1, 2]
    monkeypatch.setattr(P, 'make_inputs', make_inputs)
    with open(b / 'log.csv', 'a') as f: f.write('3,9,9,9,9,9,9,9\n')  # a step done but never saved: must be dropped
    assert cli(b, '--resume', '--steps', '4', '--cache-mb', '0', '--workers', '2') == 0
    wa, wb = weights(tmp_path / 'a'), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa: torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    ra, rb = read_log(tmp_path / 'a' / 'log.csv'), read_log(b / 'log.csv')
    assert [r['step'] for r in rb] == [1, 2, 3, 4]
    assert [r['loss'] for r in ra] == pytest.approx([r['loss'] for r in rb], rel=1e-4)
    # resuming a finished run does nothing but redraw its figures
    assert cli(b, '--resume') == 0 and load_checkpoint(b / 'checkpoint.pt')['step'] == 4


def test_interrupt_between_steps_saves_the_last_one(tmp_path, monkeypatch):
    "A KeyboardInterrupt while waiting for data (no step half done) saves the last completed step."
    make_inputs = P.make_inputs
    def interrupt_at_2(batch, *a, **k):
        if batch.keys[0][0] == 2: raise KeyboardInterrupt
        return make_inputs(batch, *a, **k)
    monkeypatch.setattr(P, 'make_inputs', interrupt_at_2)
    assert cli(tmp_path / 'run', '--steps', '3', '--ckpt-every', '3') == 130
    assert load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')['step'] == 1


def test_batch_videos_never_paste_a_source_into_itself():
    "Every batch size from 2 and every folder of at least 3 videos: the two backgrounds are two other videos (deterministic per step)."
    for n in range(3, 13):
        for B in range(2, 13):
            for step in range(8):
                src, bgs = batch_videos(0, step, n, B)
                assert len(src) == len(bgs) == B and (src, bgs) == batch_videos(0, step, n, B)
                assert all(len({a, *bb}) == 3 and max(a, *bb) < n for a, bb in zip(src, bgs)), (n, B, step)
    src, bgs = batch_videos(0, 1, 10, 2)  # a batch of 2 takes a third video for the roll
    assert len(set(src) | {v for bb in bgs for v in bb}) == 3
    with pytest.raises(ValueError, match='at least 3 videos'): batch_videos(0, 1, 2, 2)


def test_resume_with_more_steps_needs_extend(tmp_path, monkeypatch, capsys):
    "A changed --steps on resume is refused; with --extend the schedule restarts warm, and an extended run resumes exactly."
    out = tmp_path / 'run'
    assert cli(out, '--steps', '3') == 0
    capsys.readouterr()
    assert cli(out, '--resume', '--steps', '6') == 1  # would re-stretch the cosine: the lr jumping from 0 to 0.85 x peak
    err = capsys.readouterr().err
    assert '--extend' in err and 're-stretch' in err and 'from 0.00 to 0.85' in err
    assert cli(out, '--steps', '6', '--extend') == 2  # --extend without --resume is a usage error
    assert load_checkpoint(out / 'checkpoint.pt')['step'] == 3  # nothing changed
    b = tmp_path / 'copy'; shutil.copytree(out, b)
    assert cli(out, '--resume', '--steps', '6', '--extend') == 0
    assert 'warm restart at step 3' in capsys.readouterr().out
    rows, cfg = read_log(out / 'log.csv'), TrainConfig.load(out / 'config.json')
    segments = [(0, 3), (3, 6)]
    assert cfg.steps == 6 and load_checkpoint(out / 'checkpoint.pt')['schedule'] == [list(x) for x in segments]
    assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r['lr'] for r in rows] == pytest.approx([cfg.lr * extended_lr_factor(i, 2, segments) for i in range(6)], rel=1e-5)
    assert [r['lr'] for r in rows[3:]] == pytest.approx([cfg.lr * f for f in (1.0, 1.0, 0.5)], abs=1e-9)  # 1 warm-up step (half of 3), cosine
    # the same extension interrupted after step 5 and resumed (no --extend now: config.json says 6): the same weights
    make_inputs = P.make_inputs
    def ctrl_c_at_5(batch, *a, **k):
        if batch.keys[0][0] == 5: signal.raise_signal(signal.SIGINT)
        return make_inputs(batch, *a, **k)
    monkeypatch.setattr(P, 'make_inputs', ctrl_c_at_5)
    assert cli(b, '--resume', '--steps', '6', '--extend') == 130
    monkeypatch.setattr(P, 'make_inputs', make_inputs)
    assert cli(b, '--resume') == 0
    wa, wb = weights(out), weights(b)
    for k in wa: torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    assert [r['lr'] for r in read_log(b / 'log.csv')] == pytest.approx([r['lr'] for r in rows], rel=1e-6)
    assert cli(out, '--resume', '--steps', '6', '--extend') == 1  # nothing to extend


def test_batchnorm_plans(tmp_path, capsys):
    "SyncBatchNorm: on CUDA under torchrun by default, refused on the CPU when forced; MoCo's shuffle-BN needs 2 samples per group."
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    sync = lambda mode, world, dev: T._use_sync_bn(TrainConfig(sync_bn=mode), world, dev)
    assert [sync('auto', 1, cuda), sync('auto', 2, cuda), sync('off', 2, cuda), sync('on', 2, cuda)] == [False, True, False, True]
    assert [sync('auto', 2, cpu), sync('off', 2, cpu), sync('on', 1, cpu)] == [False, False, False]
    with pytest.raises(TrainingError, match='CUDA only'): sync('on', 2, cpu)
    with pytest.raises(ValueError, match='sync_bn'): TrainConfig(sync_bn='yes')
    plan = lambda world, **kw: T._bn_plan(TrainConfig(**kw), world, False)
    assert 'per process' in plan(2) and 'shuffle-BN across the 2 processes' in plan(2, moco=True, batch_size=4)
    assert plan(1) == '' and '2 BatchNorm groups' in plan(1, moco=True, batch_size=4)
    with pytest.raises(TrainingError, match='at least 4 samples'): plan(1, moco=True, batch_size=3)
    with pytest.raises(TrainingError, match='at least 2 samples per process'): plan(2, moco=True, batch_size=2)
    assert plan(1, moco=True, batch_size=3, shuffle_bn=False) == ''
    out = tmp_path / 'run'  # refused before anything is written
    assert cli(out, '--steps', '1', '--moco', '--batch-size', '3') == 1
    assert 'shuffle-BN' in capsys.readouterr().err and not out.exists()


def test_configs_saved_before_new_knobs_rebuild_as_they_ran(tmp_path):
    "A config.json without the knobs added since (old runs, the shipped checkpoints) gets the values that reproduce it."
    d = TrainConfig().to_dict()
    for k in T._LEGACY: del d[k]
    del d['paste']['min_span_clips']
    cfg = TrainConfig.from_dict(d)
    assert (cfg.region_offset, cfg.bg_gap, cfg.mask_region_bins, cfg.shuffle_bn, cfg.sync_bn, cfg.paste.min_span_clips) == \
        (0.0, 0.0, False, False, 'off', 0.0)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()  # a complete config is taken as it is
    out = tmp_path / 'run'  # an old run resumes with its own behaviour
    assert cli(out, '--steps', '2') == 0
    ck = load_checkpoint(out / 'checkpoint.pt')
    old = {k: v for k, v in ck['config'].items() if k not in T._LEGACY}
    old['paste'] = {k: v for k, v in old['paste'].items() if k != 'min_span_clips'}
    TrainConfig.from_dict(old).save(out / 'config.json')
    torch.save({**ck, 'config': old, 'schedule': None}, out / 'checkpoint.pt')
    assert cli(out, '--resume', '--steps', '3', '--extend') == 0
    assert TrainConfig.load(out / 'config.json').paste.min_span_clips == 0 and load_checkpoint(out / 'checkpoint.pt')['step'] == 3


def test_resume_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / 'run'
    assert cli(out, '--steps', '2') == 0
    assert cli(out, '--resume', '--steps', '2', '--size', '48') == 1
    assert 'size' in capsys.readouterr().err


def test_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / 'run'
    assert cli(out, '--steps', '1') == 0
    before = (out / 'checkpoint.pt').read_bytes()
    assert cli(out, '--steps', '1') == 1
    assert 'already holds a run' in capsys.readouterr().err
    assert (out / 'checkpoint.pt').read_bytes() == before
    assert cli(out, '--steps', '2', '--overwrite') == 0
    assert load_checkpoint(out / 'checkpoint.pt')['step'] == 2 and len(read_log(out / 'log.csv')) == 2


def test_checkpoint_write_failure_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint.pt'
    save_checkpoint({'step': 1, 'w': torch.ones(3)}, path)
    def dies_halfway(obj, f, *a, **k):
        f.write(b'PK\x03\x04 half a checkpoint'); f.flush()
        raise OSError('No space left on device')
    monkeypatch.setattr(torch, 'save', dies_halfway)
    with pytest.raises(OSError): save_checkpoint({'step': 2, 'w': torch.zeros(3)}, path)
    assert load_checkpoint(path)['step'] == 1 and list(tmp_path.iterdir()) == [path]


def test_killed_during_checkpoint_write(tmp_path):
    "A process killed (os._exit) in the middle of torch.save leaves the previous checkpoint loadable."
    path = tmp_path / 'checkpoint.pt'
    save_checkpoint({'step': 1, 'w': torch.ones(3)}, path)
    code = f"""
import os, torch
from pal.train import save_checkpoint
def dies(obj, f, *a, **k):
    f.write(b'PK half'); f.flush(); os._exit(9)
torch.save = dies
save_checkpoint({{'step': 2}}, {str(path)!r})
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, timeout=120)
    assert r.returncode == 9
    assert load_checkpoint(path)['step'] == 1
    assert len(list(tmp_path.glob('.checkpoint.pt.*.tmp'))) == 1  # the stale temporary file; fit removes it


def test_nan_guard(tmp_path, monkeypatch):
    "Inputs that turn the loss into NaN at step 3: the run stops naming the step, and the step-2 checkpoint stays."
    make_inputs = P.make_inputs
    def nan_at_3(batch, *a, **k):
        x = make_inputs(batch, *a, **k)
        return x * math.nan if batch.keys[0][0] == 3 else x
    monkeypatch.setattr(P, 'make_inputs', nan_at_3)
    out = tmp_path / 'run'
    with pytest.raises(TrainingError, match=r'step 3.*checkpoint.*step 2'):
        fit(TrainConfig(videos=str(sample_dir()), out=str(out), steps=5, ckpt_every=2, batch_size=4, device='cpu',
                        workers=0, warmup_steps=2, paste=T.PasteConfig(n_clips=4, clip_len=4)), progress=False, log=None)
    assert load_checkpoint(out / 'checkpoint.pt')['step'] == 2
    rows = read_log(out / 'log.csv')
    assert [r['step'] for r in rows] == [1, 2, 3] and math.isnan(rows[-1]['loss'])
    monkeypatch.setattr(P, 'make_inputs', make_inputs)
    assert cli(out, '--resume', '--steps', '5', '--ckpt-every', '2') == 0  # and the run can go on from there
    assert [r['step'] for r in read_log(out / 'log.csv')] == [1, 2, 3, 4, 5]


def _bad_files(folder):
    (folder / 'empty.mp4').touch()
    (folder / 'notes.mp4').write_text('this is a text file, not a video\n')
    data = (sample_dir() / 'plaid.mp4').read_bytes()
    (folder / 'truncated.mp4').write_bytes(data[:len(data) // 3])
    write_video(folder / 'short.mp4', torch.zeros(5, 32, 32, 3, dtype=torch.uint8), fps=10)
    return {'empty.mp4', 'notes.mp4', 'truncated.mp4', 'short.mp4'}


def test_bad_files_named_and_skipped(tmp_path, capsys):
    videos = tmp_path / 'videos'; videos.mkdir()
    for n in ('checker.mp4', 'waves.webm', 'stripes_odd.mkv', 'bframes_pts_eq_dts.mp4'): shutil.copy(sample_dir() / n, videos)
    bad = _bad_files(videos)
    assert cli(tmp_path / 'run', '--steps', '2', videos=videos) == 0
    printed = capsys.readouterr().out
    skipped = [l for l in printed.splitlines() if 'skipping' in l]
    assert {Path(l.split('skipping ')[1].split(':')[0]).name for l in skipped} == bad
    assert any('short.mp4' in l and 'too short' in l for l in skipped)
    assert '4 of 8 videos usable (4 skipped)' in printed
    ck = load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')
    assert sorted(Path(p).name for p, _ in ck['videos']) == sorted(['checker.mp4', 'waves.webm', 'stripes_odd.mkv', 'bframes_pts_eq_dts.mp4'])


@pytest.mark.parametrize('good', [0, 2])
def test_too_few_videos_refused(tmp_path, good, capsys):
    videos = tmp_path / 'videos'; videos.mkdir()
    _bad_files(videos)
    for n in ['checker.mp4', 'waves.webm'][:good]: shutil.copy(sample_dir() / n, videos)
    out = tmp_path / 'run'
    assert cli(out, '--steps', '2', videos=videos) == 1
    err = capsys.readouterr().err
    assert f'{good} usable videos of {4 + good}' in err and 'at least 3' in err
    assert not out.exists()  # nothing written, in particular no checkpoint


def test_channels_last_gives_the_same_steps(tmp_path, monkeypatch):
    "Two steps with the model and inputs in channels_last_3d and two without: the same losses and weights (CPU)."
    seen, build = {}, P.build_objective
    def spy(cfg):  # records the memory layout of what the encoder's first convolution gets
        model = build(cfg)
        model.encoder.register_forward_pre_hook(
            lambda m, a: seen.setdefault(cfg.out, []).append(a[0].is_contiguous(memory_format=torch.channels_last_3d)))
        return model
    monkeypatch.setattr(P, 'build_objective', spy)
    runs = {}
    for cl in ('on', 'off'):
        cfg = TrainConfig(videos=str(sample_dir()), out=str(tmp_path / cl), steps=2, batch_size=4, warmup_steps=1, device='cpu',
                          workers=0, channels_last=cl, paste=T.PasteConfig(n_clips=4, clip_len=4))
        runs[cl] = fit(cfg, progress=False, log=None)
    assert seen[str(tmp_path / 'on')] == [True, True] and seen[str(tmp_path / 'off')] == [False, False]
    conv = runs['on'].model.encoder.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    on, off = ([r['loss'] for r in runs[k].history] for k in ('on', 'off'))
    assert len(on) == 2 and on == pytest.approx(off, abs=1e-5, rel=0)
    a, b = weights(tmp_path / 'on'), weights(tmp_path / 'off')
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    with pytest.raises(ValueError, match='channels_last'): TrainConfig(channels_last='yes')


def test_startup_check_decodes_the_whole_file(tmp_path):
    "A file damaged in the middle passes a first-and-last-frame check; `probe_videos` decodes it all, keeps what reads and says so."
    import numpy as np
    from pal.samples import render_scene
    f = write_video(tmp_path / 'whole.mp4', render_scene(120, 48, 64, seed=1), 24, crf=18, g=12, threads=1)
    b = bytearray(f.read_bytes()); n = len(b)
    b[int(n * .45):int(n * .55)] = np.random.default_rng(0).integers(0, 256, int(n * .55) - int(n * .45), dtype=np.uint8).tobytes()
    (tmp_path / 'mid.mp4').write_bytes(bytes(b))
    lines = []
    good, bad = T.probe_videos([tmp_path / 'mid.mp4'], (40, 40), log=lines.append)
    assert not bad and len(good) == 1 and 0 < good[0].num_frames < 120  # the frames after the damage are not promised
    assert any(l.startswith(f'warning: {tmp_path / "mid.mp4"}:') and 'damaged' in l for l in lines), lines


def test_training_skips_a_video_that_fails_later(tmp_path, capsys):
    "A video that passed the start-up check but fails while training is skipped from then on; no sample uses it."
    videos, _ = T.probe_videos([sample_dir() / n for n in ('checker.mp4', 'plaid.mp4', 'rings.avi', 'dots.avi')], (40, 40), log=None)
    gone = tmp_path / 'gone.mp4'; shutil.copy(sample_dir() / 'waves.webm', gone)
    videos.append(T.VideoSource(gone, 100, None))
    gone.write_bytes(b'replaced by something that is not a video')  # e.g. a file overwritten during the run
    cfg = TrainConfig(videos='.', out=str(tmp_path / 'run'), steps=6, batch_size=4, size=32, decode_size=(40, 40))
    ds = T.PalDataset(videos, cfg)
    items = [ds[(s, b)] for s in range(6) for b in range(4)]
    assert set(ds.broken) == {4} and all(4 not in it.videos for it in items)
    assert 'skipping 1 video(s) from now on' in capsys.readouterr().err
    ds.broken.update({0: 'x', 1: 'y'})  # fewer than 3 readable videos left: a clear error, not a loop
    with pytest.raises(TrainingError, match='fewer than 3 videos still readable'): ds.choose(0, 0, attempt=1)
