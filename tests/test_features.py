"Tests for pal.features and pal.extract: rows and times as the manifest claims, seamless windowed extraction, bad files, shipped checkpoints."
import json, math, os, shutil, subprocess, sys, threading
from pathlib import Path

import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st

from pal.encoder import Encoder
from pal.encoder import feature_offset
from pal.features import ClipGrid, load_model, random_encoder, receptive_field, preprocess, row_times, video_features
from pal.extract import (extract, extract_cli, extract_features, feature_names, context_margin, window_plan, save_encoder,
                         slim_checkpoint, ExtractError, auto_jobs)
from pal.samples import sample_dir
from pal.sampling import PasteConfig
from pal.checkpoint import TrainConfig, TrainingError, build_objective, load_encoder
from pal.video import VideoReader, VideoError, check_video

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py
SAMPLES = json.loads((sample_dir() / 'manifest.json').read_text())['videos']
INFO = {Path(v['file']).stem: v for v in SAMPLES}


@pytest.fixture(scope='module')
def extracted(tmp_path_factory):
    "Random-encoder features of four sample videos (one in a subfolder, one duplicate name) plus two bad files."
    d = tmp_path_factory.mktemp('ex')
    vids = d / 'videos'; (vids / 'sub').mkdir(parents=True)
    for n in ('plaid.mp4', 'dots.avi', 'waves.webm'): shutil.copy(sample_dir() / n, vids / n)
    shutil.copy(sample_dir() / 'stripes_odd.mkv', vids / 'sub' / 'plaid.mkv')  # same stem as plaid.mp4, other folder
    (vids / 'sub' / 'text.mp4').write_text('not a video')
    (vids / 'empty.avi').write_bytes(b'')
    lines = []
    man = extract('random', vids, d / 'out', window=3, progress=False, log=lines.append, keep_tree=True)  # ids = paths under vids
    return d, man, lines


def test_rows_and_times_are_what_the_manifest_claims(extracted):
    d, man, _ = extracted
    src = {'plaid': 'plaid', 'dots': 'dots', 'waves': 'waves', 'sub/plaid': 'stripes_odd'}
    assert sorted(man['videos']) == sorted(src)
    for name, sample in src.items():
        v, info = man['videos'][name], INFO[sample]
        assert (v['num_frames'], v['fps']) == (info['frames'], info['fps'])
        assert v['clip_frames'] == v['feature_stride'] == 16 == man['clip_len'] * man['frame_stride']
        rows = math.ceil(info['frames'] / 16)  # every frame in exactly one clip
        f = np.load(d / 'out' / v['features'])
        assert f.shape == (rows, 128) == (v['rows'], man['dim']) and f.dtype == np.float32
        t, starts, ends = (np.array(v[k]) for k in ('times', 'starts', 'ends'))
        n, fps, dur = info['frames'], info['fps'], info['frames'] / info['fps']  # the samples are constant-rate
        assert v['duration'] == pytest.approx(dur, abs=2e-3) and v['constant_rate'] is True and v['times_from'] == 'pts'
        np.testing.assert_allclose(starts, np.arange(rows) * 16 / fps, atol=2e-3)  # the time of each row's first frame
        np.testing.assert_allclose(ends, np.minimum(np.arange(1, rows + 1) * 16, n) / fps, atol=2e-3)  # its last frame's end
        np.testing.assert_allclose(t, np.minimum(np.arange(rows) * 16 + 8 - 3, n) / fps, atol=2e-3)  # 3 frames before the clip centres
        assert np.all(np.diff(t) > 0) and np.all((starts < t) & (t <= ends)) and ends[-1] == pytest.approx(v['duration'])
        assert np.isfinite(f).all() and f.std(0).max() > 0
    assert man['feature_offset'] == -0.1875 == feature_offset(load_model('random')[0])  # tiny, clip_len 8: 1.5 sampled frames early
    assert 'timestamp' in man['times'] and 'feature_offset' in man['times']  # says how the times were derived


def test_same_stem_in_two_folders_does_not_overwrite(extracted):
    d, man, _ = extracted
    a, b = np.load(d / 'out' / 'plaid.npy'), np.load(d / 'out' / 'sub' / 'plaid.npy')
    assert a.shape != b.shape  # 96 vs 120 frames: two files, two videos
    assert man['videos']['sub/plaid']['file'] == 'sub/plaid.mkv'
    assert feature_names([Path('v/x.mp4'), Path('v/x.avi'), Path('v/s/x.mp4')], Path('v')) == ['x_mp4', 'x_avi', 's/x']


def test_bad_videos_are_named_and_skipped(extracted):
    d, man, lines = extracted
    assert sorted(s['file'] for s in man['skipped']) == ['empty.avi', 'sub/text.mp4']
    skipped = [l for l in lines if 'skipping' in l]
    assert len(skipped) == 2 and any('text.mp4' in l for l in skipped) and any('empty.avi' in l for l in skipped)
    assert json.loads((d / 'out' / 'manifest.json').read_text())['skipped'] == man['skipped']
    for s in man['skipped']:  # pal-probe's reason, word for word
        assert s['error'] == check_video(d / 'videos' / s['file']).reason and f"{s['file']}: {s['error']}" in '\n'.join(lines)


def test_nothing_usable_exits_nonzero(tmp_path, capsys):
    (tmp_path / 'v').mkdir(); (tmp_path / 'v' / 'a.mp4').write_bytes(b'\x00' * 64)
    with pytest.raises(ExtractError, match='none of 1'): extract('random', tmp_path / 'v', tmp_path / 'o', progress=False, log=None)
    with pytest.raises(SystemExit) as e:
        extract_cli(['--checkpoint', 'random', '--videos', str(tmp_path / 'v'), '--out', str(tmp_path / 'o'), '--no-progress'])
    out = capsys.readouterr()
    assert e.value.code == 1 and 'skipping' in out.out and 'a.mp4' in out.out and 'none of 1' in out.err
    with pytest.raises(SystemExit) as e:
        extract_cli(['--checkpoint', str(tmp_path / 'missing.pt'), '--videos', str(sample_dir()), '--out', str(tmp_path / 'o2')])
    assert e.value.code == 1


def test_cli_writes_a_loadable_folder(tmp_path):
    from pal.evaluate import load_features
    extract_cli(['--checkpoint', 'random', '--videos', str(sample_dir() / 'dots.avi'), '--out', str(tmp_path), '--no-progress'])
    fv = load_features(tmp_path)['dots']
    assert fv.feats.shape == (5, 128) and fv.stride == pytest.approx(16 / 12) and fv.duration == pytest.approx(6.0)


@pytest.mark.parametrize('clip_len,frame_stride', [(8, 2), (4, 1)])
def test_windowed_extraction_equals_one_pass(clip_len, frame_stride):
    cfg = TrainConfig(paste=PasteConfig(clip_len=clip_len, frame_stride=frame_stride), seed=3)
    enc = random_encoder(cfg)
    r = VideoReader(sample_dir() / 'rings.avi', size=cfg.decode_hw)  # 125 frames
    ref = extract_features(enc, r, cfg.augment, frame_stride, window=10_000)  # one pass
    assert len(ref) == math.ceil(125 / (clip_len * frame_stride))
    m = context_margin(enc)
    for w in (2 * m + 1, 2 * m + 2, 2 * m + 5):
        for batch in (1, 3):  # the last window is shorter: it gets a forward of its own
            got = extract_features(enc, r, cfg.augment, frame_stride, window=w, margin=m, batch=batch)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # the margin is needed: without it the windows leave seams (so the check above can fail)
    naive = extract_features(enc, r, cfg.augment, frame_stride, window=2, margin=0)
    assert np.abs(naive - ref).max() > 1e-3 * np.abs(ref).max()


class _Spy:
    "A reader that records the thread of every `get`, and raises a VideoError at get number `fail_at` (counting from 1)."
    def __init__(self, reader, fail_at=None):
        self.reader, self.fail_at, self.threads = reader, fail_at, []
        self.num_frames, self.fps, self.path = reader.num_frames, reader.fps, reader.path
    def get(self, idx):
        self.threads.append(threading.current_thread())
        if len(self.threads) == self.fail_at: raise VideoError(f'{self.path}: truncated or corrupt data in frame {int(idx[0])}')
        return self.reader.get(idx)


@pytest.mark.parametrize('video,batch', [('rings.avi', 1), ('plaid.mp4', 2), ('stripes_odd.mkv', 1)])
def test_prefetch_gives_the_same_features(video, batch):
    "Decoding the next windows in a background thread changes when frames are decoded, not the features."
    enc, cfg, _ = load_model('random')
    r = VideoReader(sample_dir() / video, size=cfg.decode_hw)
    slow = _Spy(r); ref = extract_features(enc, slow, cfg.augment, 2, window=3, batch=batch, prefetch=False)
    fast = _Spy(r); got = extract_features(enc, fast, cfg.augment, 2, window=3, batch=batch, prefetch=True)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert len(ref) == math.ceil(r.num_frames / 16) and np.abs(ref).max() > 0
    assert len(fast.threads) == len(slow.threads) > batch  # several forwards: something to overlap
    assert set(slow.threads) == {threading.main_thread()}
    assert threading.main_thread() not in fast.threads  # every window was decoded in the background thread


def test_decoding_error_in_the_thread_propagates(tmp_path, monkeypatch):
    "A VideoError raised while prefetching reaches the caller, and `extract` skips that file by name and goes on."
    enc, cfg, _ = load_model('random')
    r = VideoReader(sample_dir() / 'rings.avi', size=cfg.decode_hw)
    with pytest.raises(VideoError, match='rings.avi: truncated'):
        extract_features(enc, _Spy(r, fail_at=3), cfg.augment, 2, window=3, batch=1, prefetch=True)
    # a folder: a file cut short (found when it is opened), one that fails in the middle of decoding
    # (in the background thread), and a good one
    vids = tmp_path / 'v'; vids.mkdir()
    data = (sample_dir() / 'plaid.mp4').read_bytes()
    (vids / 'cut.mp4').write_bytes(data[:len(data) // 2])
    shutil.copy(sample_dir() / 'rings.avi', vids / 'breaks.avi'); shutil.copy(sample_dir() / 'dots.avi', vids / 'good.avi')
    get, calls = VideoReader.get, []
    def flaky(self, idx):  # breaks.avi decodes its first window, then fails
        if self.path.name == 'breaks.avi':
            calls.append(threading.current_thread())
            if len(calls) == 2: raise VideoError(f'{self.path}: truncated or corrupt data in frame {int(idx[0])}')
        return get(self, idx)
    monkeypatch.setattr(VideoReader, 'get', flaky)
    lines = []
    man = extract('random', vids, tmp_path / 'o', window=3, batch=1, progress=False, log=lines.append)
    assert sorted(s['file'] for s in man['skipped']) == ['breaks.avi', 'cut.mp4']
    assert any('breaks.avi' in l and 'truncated or corrupt' in l for l in lines) and any('cut.mp4' in l for l in lines)
    assert list(man['videos']) == ['good'] and (tmp_path / 'o' / 'good.npy').is_file() and not (tmp_path / 'o' / 'breaks.npy').exists()
    assert len(calls) == 2 and threading.main_thread() not in calls  # it failed in the decoding thread


def test_receptive_field_is_exact_for_the_tiny_net():
    torch.manual_seed(0)
    enc = Encoder('tiny', clip_len=8).eval()
    before, after = receptive_field(enc)
    assert (before, after) == (8, 5)
    L, k = 8, 4
    x = torch.randn(1, 3, 9 * L, 16, 16)
    with torch.no_grad():
        f = enc(x)[0, :, k]
        def changed(frame):
            y = x.clone(); y[:, :, frame] += 5
            return (enc(y)[0, :, k] - f).abs().max().item() > 1e-6
        assert changed(k * L - before) and changed(k * L + L - 1 + after)  # the reach's ends do matter
        assert not changed(k * L - before - 1) and not changed(k * L + L + after)  # one frame further does not


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 400), st.integers(1, 50), st.integers(0, 10))
def test_window_plan_tiles_with_context(rows, window, margin):
    if rows > window and window <= 2 * margin:
        with pytest.raises(ValueError): window_plan(rows, window, margin)
        return
    plan = window_plan(rows, window, margin)
    assert [c for _, lo, hi in plan for c in range(lo, hi)] == list(range(rows))
    for a, lo, hi in plan:
        assert 0 <= a <= lo < hi <= min(a + window, rows)
        assert a == 0 or lo - a >= margin
        assert a + window >= rows or a + window - hi >= margin
    # clips encoded: the kept ones, plus the margins of each window boundary (no flush-with-the-end re-encoding)
    assert sum(min(window, rows - a) for a, _, _ in plan) <= rows + 2 * margin * (len(plan) - 1)


def test_clip_grid_clamps_the_last_clip():
    g = ClipGrid(100, 25.0, 8, 2)
    assert g.rows == 7 and g.frame_indices(6, 1).tolist() == [96, 98, 99, 99, 99, 99, 99, 99]
    assert g.frame_indices(2, 2).tolist() == list(range(32, 64, 2))


def test_preprocess_is_training_without_randomness():
    from pal.paste import apply_augment, AugmentParams
    cfg = TrainConfig()
    frames = VideoReader(sample_dir() / 'plaid.mp4', size=cfg.decode_hw).get(range(8))
    p = AugmentParams(torch.tensor([[0.0, 0.0, *frames.shape[1:3]]]), torch.tensor([False]), torch.tensor([[1.0, 1, 1, 0]]),
                      torch.tensor([False]))
    torch.testing.assert_close(preprocess(frames, cfg.augment), apply_augment(frames[None], p, cfg.augment)[0])


def test_random_encoder_is_the_training_init():
    "The random-init baseline is the encoder `fit` starts from, for either method and backbone width."
    for cfg in (TrainConfig(seed=3), TrainConfig(seed=3, method='video', width=8)):
        torch.manual_seed(cfg.seed); ref = build_objective(cfg).encoder.state_dict()
        state = torch.random.get_rng_state()
        got = random_encoder(cfg).state_dict()
        assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
        assert all(torch.equal(ref[k], v) for k, v in got.items())


def test_video_features_is_the_windowed_extraction():
    "One pass over a whole video gives the rows and times `pal-extract` writes in windows."
    enc, cfg, _ = load_model('random')
    f, t = video_features(enc, cfg, sample_dir() / 'rings.avi')
    with VideoReader(sample_dir() / 'rings.avi', size=cfg.decode_hw) as r:
        np.testing.assert_allclose(f, extract_features(enc, r, cfg.augment, cfg.paste.frame_stride, window=3), atol=1e-5)
        g = ClipGrid(r.num_frames, r.fps, enc.clip_len, cfg.paste.frame_stride)
        np.testing.assert_allclose(t, row_times(r.times, r.duration, g, feature_offset(enc))[2])
    assert f.shape == (g.rows, enc.out_dim) and f.dtype == np.float32


def test_lesson_modules_do_not_import_training():
    "pal.features and pal.extract load an encoder without the training loop (pal.train); the moved names still import from pal.features."
    code = ('import sys, pal.features, pal.extract; assert "pal.train" not in sys.modules, sorted(sys.modules); '
            'from pal.features import extract, save_encoder, ExtractError, window_plan; import pal.extract as E; '
            'assert extract is E.extract and window_plan is E.window_plan')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_checkpoint_round_trip(tmp_path):
    cfg = TrainConfig(seed=5, width=8)
    enc = random_encoder(cfg)
    save_encoder(tmp_path / 'a.pt', cfg, enc, 'random', command='x')
    enc2, cfg2, info = load_model(tmp_path / 'a.pt')
    assert cfg2 == cfg and info['kind'] == 'random'
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), enc2.state_dict().values()))
    slim_checkpoint(tmp_path / 'a.pt', tmp_path / 'b.pt', note='y')
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), load_encoder(tmp_path / 'b.pt').state_dict().values()))
    with pytest.raises(TrainingError, match='nope.pt'): load_model(tmp_path / 'nope.pt')


# shipped checkpoints (checkpoints/README.md says how they were made)
SHIPPED = ROOT / 'checkpoints'

@pytest.fixture(scope='module')
def shipped():
    if not (SHIPPED / 'pal.pt').is_file(): pytest.skip('checkpoints/ not present')
    return {k: torch.load(SHIPPED / f'{k}.pt', map_location='cpu', weights_only=True) for k in ('random', 'video', 'pal')}


def test_shipped_checkpoints_configs(shipped):
    for kind, ck in shipped.items():
        assert (SHIPPED / f'{kind}.pt').stat().st_size <= 5e6
        assert ck['kind'] == kind and 'pal-bench' in ck['command'] and 'optimizer' not in ck
        cfg = TrainConfig.from_dict(ck['config'])
        assert (cfg.backbone, cfg.mode, cfg.size, cfg.paste.clip_len, cfg.paste.frame_stride, cfg.seed) == ('tiny', 'sequence', 32, 4, 1, 0)
        assert cfg.method == ('pal' if kind == 'random' else kind)
        assert ck['step'] == (0 if kind == 'random' else cfg.steps)
        # the stored config rebuilds the architecture: strict load, same parameter shapes
        enc = Encoder(cfg.backbone, cfg.mode, cfg.paste.clip_len, width=cfg.width)
        enc.load_state_dict(ck['encoder'])
        assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in ck['encoder'].items()}


def test_shipped_weights_differ_from_random(shipped):
    rnd = random_encoder(TrainConfig.from_dict(shipped['random']['config'])).state_dict()
    assert all(torch.equal(rnd[k], v) for k, v in shipped['random']['encoder'].items())  # random.pt is the seeded init
    w = lambda ck: torch.cat([v.flatten().float() for k, v in ck['encoder'].items() if k.endswith('weight')])
    for kind in ('video', 'pal'):
        d = (w(shipped[kind]) - w(shipped['random'])).norm() / w(shipped['random']).norm()
        assert d > 0.01, f'{kind}.pt is (almost) the random init'
    assert not torch.equal(w(shipped['video']), w(shipped['pal']))


def test_jobs_give_the_same_files(tmp_path):
    "Several videos at once (threads) write the same features and manifest entries as one at a time, and still skip a bad file by name."
    vids = tmp_path / 'v'; vids.mkdir()
    for f in ('rings.avi', 'plaid.mp4', 'dots.avi', 'waves.webm'): shutil.copy(sample_dir() / f, vids / f)
    (vids / 'broken.mp4').write_bytes(b'not a video at all')
    lines = {}
    mans = {j: extract('random', vids, tmp_path / f'o{j}', window=3, progress=False, log=lines.setdefault(j, []).append, jobs=j)
            for j in (1, 3)}
    assert mans[1]['videos'] == mans[3]['videos'] and sorted(mans[1]['videos']) == ['dots', 'plaid', 'rings', 'waves']
    assert [s['file'] for s in mans[3]['skipped']] == ['broken.mp4'] and any('broken.mp4' in l for l in lines[3])
    for name, v in mans[1]['videos'].items():
        assert np.array_equal(np.load(tmp_path / 'o1' / v['features']), np.load(tmp_path / 'o3' / v['features']))


def test_auto_jobs():
    "Two videos at once on the CPU whatever its size; on CUDA one per CPU core but one (decoding is the bound there), 2..16."
    cpu, gpu = torch.device('cpu'), torch.device('cuda')
    assert [auto_jobs(cpu, n) for n in (1, 2, 64)] == [2, 2, 2]
    assert [auto_jobs(gpu, n) for n in (1, 2, 3, 8, 17, 64)] == [2, 2, 2, 7, 16, 16]


def test_cli_jobs_default_and_bad_value(tmp_path, capsys):
    "`--jobs` is optional (auto) and must be >= 1 when given."
    vids = tmp_path / 'v'; vids.mkdir(); shutil.copy(sample_dir() / 'rings.avi', vids / 'rings.avi')
    extract_cli(['--checkpoint', 'random', '--videos', str(vids), '--out', str(tmp_path / 'o'), '--window', '3', '--no-progress'])
    assert (tmp_path / 'o' / 'rings.npy').exists()
    with pytest.raises(SystemExit): extract_cli(['--checkpoint', 'random', '--videos', str(vids), '--out', str(tmp_path / 'p'), '--jobs', '0'])
    assert '--jobs' in capsys.readouterr().err


def test_row_times_of_a_constant_rate_video_are_the_nominal_rule():
    g = ClipGrid(100, 25.0, clip_len=8, frame_stride=2)  # 7 rows; the last clip runs past frame 99
    starts, ends, centres = row_times(np.arange(100) / 25, 4.0, g)
    np.testing.assert_allclose(starts, np.arange(7) * 16 / 25)
    np.testing.assert_allclose(ends, np.r_[np.arange(1, 7) * 16 / 25, 4.0])
    np.testing.assert_allclose(centres, np.minimum(np.arange(7) * 16 + 8, 100) / 25)  # (i * stride + clip_frames / 2) / fps, clamped
    np.testing.assert_allclose(g.times(), centres)
    np.testing.assert_allclose(row_times(np.arange(100) / 25, 4.0, g, -0.4375)[2][:6], (np.arange(6) * 16 + 8 - 7) / 25)  # r3d_18: 7 frames early
    assert row_times(np.arange(3) / 10, 0.3, ClipGrid(3, 10.0, 8))[1].tolist() == [0.3]  # shorter than a clip: one row, the whole video


def test_row_times_follow_variable_frame_rate():
    "30 fps, then 5 fps for 16 frames, then 60 fps: each row is timed by its own frames."
    dt = np.r_[np.full(16, 1 / 30), np.full(16, 1 / 5), np.full(16, 1 / 60)]
    t = np.r_[0, np.cumsum(dt)[:-1]]
    g = ClipGrid(48, 30.0, clip_len=4, frame_stride=2)  # rows of 8 frames: 2 per stretch
    starts, ends, centres = row_times(t, dt.sum(), g, -0.375)
    np.testing.assert_allclose(ends - starts, np.repeat([8 / 30, 8 / 5, 8 / 60], 2))
    np.testing.assert_allclose(centres - starts, np.repeat([8 / 30, 8 / 5, 8 / 60], 2) * (0.5 - 0.375))  # an eighth into the row
    assert ends[-1] == pytest.approx(16 / 30 + 16 / 5 + 16 / 60)
    assert g.times(-0.375)[-1] < 1.6 < centres[-1]  # the nominal rate puts the last row at 1.5 s, its frames are at 3.9 s


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 120), clip_len=st.sampled_from([1, 2, 4, 8]), frame_stride=st.integers(1, 3),
       offset=st.floats(-0.49, 0.49), seed=st.integers(0, 2 ** 16))
def test_row_times_tile_the_video(n, clip_len, frame_stride, offset, seed):
    rng = np.random.default_rng(seed)
    dt = rng.uniform(0.005, 0.5, n)  # any positive display durations
    t = np.r_[0, np.cumsum(dt)[:-1]]
    g = ClipGrid(n, 30.0, clip_len, frame_stride)
    starts, ends, centres = row_times(t, dt.sum(), g, offset)
    assert len(starts) == g.rows and starts[0] == 0 and ends[-1] == pytest.approx(dt.sum())
    np.testing.assert_array_equal(starts, t[np.arange(g.rows) * g.stride])  # the time of each row's first frame
    np.testing.assert_array_equal(ends[:-1], starts[1:])  # rows tile the video
    assert np.all(starts < centres) and np.all(centres <= ends) and np.all(np.diff(centres) > 0)
    s2, e2, c2 = row_times(3 * t, 3 * dt.sum(), g, offset)  # slow the video down 3x: every time triples
    np.testing.assert_allclose(np.r_[s2, e2, c2], 3 * np.r_[starts, ends, centres], rtol=1e-9, atol=1e-12)


def test_row_times_reject_bad_frame_times():
    g = ClipGrid(4, 10.0, 2)
    with pytest.raises(ValueError, match='expected 4 frame times'): row_times(np.arange(5) / 10, 0.5, g)
    with pytest.raises(ValueError, match='non-decreasing'): row_times(np.array([0, 0.2, 0.1, 0.3]), 0.4, g)
    with pytest.raises(ValueError, match='duration'): row_times(np.arange(4) / 10, 0.2, g)


def test_manifest_times_of_variable_frame_rate_files_follow_their_timestamps(tmp_path):
    "A VFR mp4 and an AVI with dropped frames: every row's start, end and centre from the frames' own times, not the nominal rate."
    from pal.samples import write_video, render_scene
    rng = np.random.default_rng(0)
    vids = tmp_path / 'v'
    t_mp4 = np.cumsum(np.r_[0, rng.choice([1, 1, 2, 6], 79)]) / 30  # 1 to 6 thirtieths of a second apart
    t_avi = np.cumsum(np.r_[0, rng.choice([1, 1, 1, 4], 59)]) / 15  # an AVI that dropped frames: empty 1/15 s slots
    write_video(vids / 'phone.mp4', render_scene(80, 32, 32, seed=1), 30, times=t_mp4, crf=23, g=12, threads=1)
    write_video(vids / 'dropped.avi', render_scene(60, 32, 32, seed=2), 15, 'mpeg4', times=t_avi, bit_rate=200_000)
    man = extract('random', vids, tmp_path / 'o', progress=False, log=None)
    d = man['feature_offset']
    for name, t, fps in [('phone', t_mp4, 30), ('dropped', t_avi, 15)]:
        v = man['videos'][name]
        g = ClipGrid(len(t), fps, man['clip_len'], man['frame_stride'])
        assert (v['num_frames'], v['rows'], v['constant_rate'], v['times_from']) == (len(t), g.rows, False, 'pts')
        assert 0 < v['duration'] - t[-1] <= 6 / fps  # the last frame's display time is the file's to say: short
        starts, ends, centres = row_times(t, v['duration'], g, d)  # the truth, from the timestamps we wrote
        clip = ends - starts  # seconds each row spans
        for k, want in [('starts', starts), ('ends', ends), ('times', centres)]:
            assert np.all(np.abs(np.array(v[k]) - want) <= 0.01 * clip + 1e-4), k  # within 1 % of a clip (timestamp rounding)
        nominal = g.times()  # what (i * stride + clip_frames / 2) / fps said
        assert nominal[-1] < 0.6 * centres[-1]  # the nominal rate would put the last row far too early


# ---------------------------------------------------------------------------------------------------------
# what the field loads: flat ids, merged manifests, dataset values, CSV / HDF5, the ActionFormer config

from pal.extract import (video_ids, open_manifest, dataset_values, write_csv, read_csv, rescale_features, write_video_info,
                         read_h5, H5_FILE, VIDEO_INFO_COLUMNS, actionformer_config, actionformer_num_frames, seq_len_multiple,
                         to_yaml, tal_config_cli, ACTIONFORMER_DATASET_KEYS)


def _split_folders(root, splits={'train': ['plaid.mp4', 'dots.avi'], 'test': ['rings.avi', 'waves.webm']}):
    for split, files in splits.items():
        (root / split).mkdir(parents=True)
        for f in files: shutil.copy(sample_dir() / f, root / split / f)
    return root


def test_flat_ids_and_clashes(tmp_path, capsys):
    "Ids are file stems in one flat folder; two files with one stem stop the run before anything is written, naming both."
    vids = _split_folders(tmp_path / 'v', {'a': ['plaid.mp4'], 'b': ['dots.avi']})
    shutil.copy(sample_dir() / 'rings.avi', vids / 'b' / 'plaid.avi')  # stem 'plaid' again, other folder
    with pytest.raises(SystemExit) as e:
        extract_cli(['--checkpoint', 'random', '--videos', str(vids), '--out', str(tmp_path / 'o'), '--no-progress'])
    err = capsys.readouterr().err
    assert e.value.code == 1 and str(vids / 'a' / 'plaid.mp4') in err and str(vids / 'b' / 'plaid.avi') in err and '--keep-tree' in err
    assert not (tmp_path / 'o').exists()
    assert video_ids([Path('v/a/x.mp4'), Path('v/b/y.avi')], Path('v')) == ['x', 'y']
    extract_cli(['--checkpoint', 'random', '--videos', str(vids), '--out', str(tmp_path / 't'), '--no-progress', '--keep-tree', '--window', '3'])
    assert sorted(json.loads((tmp_path / 't' / 'manifest.json').read_text())['videos']) == ['a/plaid', 'b/dots', 'b/plaid']
    assert (tmp_path / 't' / 'b' / 'plaid.npy').is_file()


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    "Two splits extracted one run each into one folder, with CSV and HDF5."
    d = tmp_path_factory.mktemp('runs')
    _split_folders(d / 'v')
    mans = [extract('random', d / 'v' / s, d / 'o', window=3, progress=False, log=None, formats=('npy', 'csv', 'h5')) for s in ('train', 'test')]
    return d, mans


def test_runs_into_one_folder_merge_their_manifests(two_runs):
    d, (first, man) = two_runs
    assert sorted(first['videos']) == ['dots', 'plaid'] and sorted(man['videos']) == ['dots', 'plaid', 'rings', 'waves']
    on_disk = json.loads((d / 'o' / 'manifest.json').read_text())
    assert on_disk['videos'] == man['videos'] and [r['extracted'] for r in on_disk['runs']] == [2, 2]
    assert sorted(p.name for p in (d / 'o').glob('*.npy')) == ['dots.npy', 'plaid.npy', 'rings.npy', 'waves.npy']  # flat
    for name, v in man['videos'].items():
        assert v['features'] == f'{name}.npy' and v['source'] == str((d / 'v' / ('train' if name in first['videos'] else 'test') / v['file']).resolve())
        assert np.load(d / 'o' / v['features']).shape == (v['rows'], man['dim'])
    # folder-wide values: rows of the longest video, no single fps (12, 24, 25 fps), the grid
    assert man['num_videos'] == 4 and man['max_rows'] == max(v['rows'] for v in man['videos'].values()) == math.ceil(125 / 16)
    assert man['fps'] is None and 'frame rates' in man['fps_note']
    assert (man['feature_stride'], man['clip_frames'], man['dim'], man['feature_offset']) == (16, 16, 128, -0.1875)
    assert len(man['encoder_sha256']) == 64 and man['layout'] == 'flat' and man['formats'] == ['npy', 'csv', 'h5']


def test_csv_and_hdf5_round_trip_to_the_npy_arrays(two_runs):
    d, (_, man) = two_runs
    h5 = read_h5(d / 'o' / H5_FILE)
    assert sorted(h5) == sorted(man['videos'])
    import h5py
    with h5py.File(d / 'o' / H5_FILE, 'r') as h:
        assert json.loads(h.attrs['pal_manifest'])['encoder_sha256'] == man['encoder_sha256'] and h.attrs['feature_stride'] == 16
        for name, v in man['videos'].items():
            np.testing.assert_array_equal(h[name].attrs['times'], v['times'])
            assert h[name].attrs['fps'] == v['fps'] and h[name].dtype == np.float32
    for name, v in man['videos'].items():
        npy = np.load(d / 'o' / v['features'])
        assert v['csv'] == f'csv/{name}.csv'
        np.testing.assert_array_equal(read_csv(d / 'o' / v['csv']), npy)  # bit for bit
        np.testing.assert_array_equal(h5[name], npy)
        header = (d / 'o' / v['csv']).read_text().splitlines()[0]
        assert header == ','.join(f'f{c}' for c in range(128))  # BSN's column names; no time column (pandas .values reads every column)
    rows = (d / 'o' / 'video_info.csv').read_text().splitlines()
    assert rows[0] == ','.join(VIDEO_INFO_COLUMNS) == 'video,numFrame,seconds,fps,rfps,subset,featureFrame'
    info = {r.split(',')[0]: r.split(',') for r in rows[1:]}
    assert sorted(info) == sorted(man['videos'])
    rings = info['rings']
    assert (int(rings[1]), float(rings[2]), float(rings[4]), int(rings[6])) == (125, man['videos']['rings']['duration'], 25.0, 125)
    assert float(rings[3]) == pytest.approx(125 / man['videos']['rings']['duration'])


def test_csv_round_trip_is_exact_for_any_float32(tmp_path):
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32) * np.float32(10.0) ** np.arange(-20, 15, 7, dtype=np.float32)
    x[0, 0], x[1, 1] = np.float32(np.finfo(np.float32).tiny), -np.float32(np.finfo(np.float32).max)
    write_csv(tmp_path / 'a.csv', x); np.testing.assert_array_equal(read_csv(tmp_path / 'a.csv'), x)
    write_csv(tmp_path / 'b.csv', x[:1]); np.testing.assert_array_equal(read_csv(tmp_path / 'b.csv'), x[:1])  # one row


def _bsn_pool(data, x, corrected_second, num_prop=100, num_sample_bin=3):
    "BSN's poolData (data_process.py), restated: snippet centres x, mean of linearly interpolated samples per bin (zeros outside x)."
    f = lambda xs: np.stack([np.interp(xs, x, data[:, c]) for c in range(data.shape[1])], 1)  # scipy's interp1d, linear, inside x
    out = []
    for i in range(num_prop):
        xmin = max(x[0] + 0.0001, i / num_prop * corrected_second)
        xmax = min(x[-1] - 0.0001, (i + 1) / num_prop * corrected_second)
        if xmax < x[0] or xmin > x[-1]: out.append(np.zeros(data.shape[1])); continue
        plen = (xmax - xmin) / (num_sample_bin - 1)
        out.append(f([xmin + plen * k for k in range(num_sample_bin)]).mean(0))
    return np.stack(out)


def test_rescale_is_bsn_pooling():
    rng = np.random.default_rng(1)
    feats, times = rng.normal(size=(30, 4)), (np.arange(30) + 0.5) * 0.5  # rows every 0.5 s, 15 s
    got = rescale_features(feats, times, 15.0, 100)
    ref = _bsn_pool(feats, times, 15.0)
    inner = [i for i in range(100) if times[0] + 1e-4 <= i * 0.15 and (i + 1) * 0.15 <= times[-1] - 1e-4]  # bins BSN does not clip
    assert len(inner) > 90 and got.shape == (100, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got[inner], ref[inner], atol=1e-5)
    lin = rescale_features(np.c_[times], times, 15.0, 10)  # a feature equal to its time: each bin's mean sample time, held at the ends
    pts = np.arange(10)[:, None] * 1.5 + np.array([0, 0.75, 1.5])  # bin start, middle and end
    np.testing.assert_allclose(lin[:, 0], np.clip(pts, 0.25, 14.75).mean(1), atol=1e-5)


def test_another_encoder_or_setting_is_refused_and_one_file_is_one_id(two_runs, tmp_path):
    d, (_, man) = two_runs
    before = (d / 'o' / 'manifest.json').read_text()
    with pytest.raises(ExtractError, match='another encoder') as e:
        extract(ROOT / 'checkpoints' / 'pal.pt', d / 'v' / 'test', d / 'o', progress=False, log=None, formats=('npy', 'csv', 'h5'))
    assert 'pal.pt' in str(e.value) and 'random' in str(e.value)
    with pytest.raises(ExtractError, match='other settings.*frame_stride 2 there, 1 now'):
        extract('random', d / 'v' / 'test', d / 'o', frame_stride=1, progress=False, log=None, formats=('npy', 'csv', 'h5'))
    with pytest.raises(ExtractError, match='formats'): extract('random', d / 'v' / 'test', d / 'o', progress=False, log=None)
    other = _split_folders(tmp_path / 'w', {'x': ['checker.mp4']}) / 'x'
    shutil.move(other / 'checker.mp4', other / 'dots.mp4')  # another file that would be id 'dots'
    with pytest.raises(ExtractError, match="id 'dots'"):
        extract('random', other, d / 'o', progress=False, log=None, formats=('npy', 'csv', 'h5'))
    assert (d / 'o' / 'manifest.json').read_text() == before  # refused runs change nothing
    # the same encoder under another file name is the same encoder
    enc, cfg, _ = load_model('random'); save_encoder(tmp_path / 'copy.pt', cfg, enc, 'random')
    again = extract(tmp_path / 'copy.pt', d / 'v' / 'test', tmp_path / 'o2', window=3, progress=False, log=None)
    assert again['encoder_sha256'] == man['encoder_sha256']
    old = tmp_path / 'old'; old.mkdir(); (old / 'manifest.json').write_text(json.dumps({'format': 'pal-features-1', 'videos': {}}))
    with pytest.raises(ExtractError, match='older pal-extract'): open_manifest(old, {**man, 'videos': {}})


def test_rerun_replaces_entries_and_a_now_broken_file_is_forgotten(tmp_path):
    vids = _split_folders(tmp_path / 'v', {'a': ['dots.avi', 'plaid.mp4']}) / 'a'
    extract('random', vids, tmp_path / 'o', window=3, progress=False, log=None)
    (vids / 'plaid.mp4').write_bytes(b'broken now')
    lines = []
    man = extract('random', vids, tmp_path / 'o', window=3, progress=False, log=lines.append)
    assert list(man['videos']) == ['dots'] and not (tmp_path / 'o' / 'plaid.npy').exists()
    assert [s['file'] for s in man['skipped']] == ['plaid.mp4'] and any('earlier features' in l for l in lines)
    shutil.copy(sample_dir() / 'plaid.mp4', vids / 'plaid.mp4')  # mended: its skip is forgotten
    man = extract('random', vids, tmp_path / 'o', window=3, progress=False, log=None)
    assert sorted(man['videos']) == ['dots', 'plaid'] and man['skipped'] == [] and len(man['runs']) == 3


def test_dataset_values_say_when_no_fps_fits():
    g = ClipGrid(40, 10.0, 4, 1)
    def video(fps, times=None):
        g = ClipGrid(40, fps, 4, 1)
        return dict(num_frames=40, fps=fps, rows=g.rows, times=(g.times(-0.375) if times is None else times).tolist())
    man = dict(clip_len=4, frame_stride=1, feature_offset=-0.375, videos={'a': video(10.0), 'b': video(10.0)})
    assert dataset_values(man) == dict(num_videos=2, max_rows=10, fps=10.0, fps_note='every video 10 fps, and its rows follow that rate')
    man['videos']['c'] = video(12.5)
    assert dataset_values(man)['fps'] is None and '2 frame rates (10, 12.5 fps)' in dataset_values(man)['fps_note']
    man['videos']['c'] = video(10.0, g.times(-0.375) * 1.5)  # timestamps 1.5x apart: the header rate does not time the rows
    v = dataset_values(man)
    assert v['fps'] is None and '1 of 3 videos (c)' in v['fps_note']


def test_problem_files_warn_in_the_log_and_manifest(tmp_path):
    "A file cut short is read as far as it goes, with check_video's warning in the log and the entry."
    from pal.samples import cut_mid_packet
    vids = tmp_path / 'v'; vids.mkdir()
    _, n = cut_mid_packet(sample_dir() / 'rings.avi', vids / 'cut.avi', .5)
    want = check_video(vids / 'cut.avi', (40, 40)).warnings
    lines = []
    man = extract('random', vids, tmp_path / 'o', window=3, progress=False, log=lines.append)
    v = man['videos']['cut']
    assert want and v['warnings'] == want and 'cut short' in want[0] and v['num_frames'] == n
    assert any(l.endswith(f'cut.avi: warning: {want[0]}') for l in lines)


def test_to_yaml_reads_back_with_pyyaml():
    yaml = pytest.importorskip('yaml')
    d = dict(a=1, b=1e-5, b2=1e-4, c=2.5e20, d=None, e=True, f='x: y # z "q"', g=[0.9, 1.0, -3], h=dict(i='.npy', j=[], k={}, l=float('inf')),
             m=0.001, n=1.0, o='null', p='1e-4', q='ünï')
    text = to_yaml(d, {('h', 'i'): 'a comment # with a hash', ('a',): 'one'}, header=['top', ''])
    assert yaml.load(text, Loader=yaml.FullLoader) == d  # ActionFormer's loader
    assert 'b: 1.0e-05' in text and 'b2: 0.0001' in text and text.startswith('# top\n#\n') and 'i: ".npy"  # a comment # with a hash' in text
    with pytest.raises(ValueError): to_yaml({'a b': 1})


def test_seq_len_multiple_is_actionformers_divisibility():
    assert seq_len_multiple() == 32  # default backbone_arch (2, 2, 5), global attention
    assert seq_len_multiple(win_size=19) == 576  # THUMOS config: max_seq_len 2304 = 4 x 576
    assert seq_len_multiple(win_size=[25, 25, 25, 25, 25, -1]) == 16 * 24  # ActivityNet config: 768 = 2 x 384
    assert actionformer_num_frames(dict(clip_frames=16, feature_offset=-0.1875)) == 10
    assert actionformer_num_frames(dict(clip_frames=4, feature_offset=-0.375)) == 1


# ActionFormer's dataset classes (libs/datasets/anet.py, thumos14.py) take these keyword arguments from the config's
# `dataset:` block, besides is_training and split: a key more or less is a TypeError there.
AF_DATASET_ARGS = {'feat_folder', 'json_file', 'feat_stride', 'num_frames', 'default_fps', 'downsample_rate', 'max_seq_len', 'trunc_thresh',
                   'crop_ratio', 'input_dim', 'num_classes', 'file_prefix', 'file_ext', 'force_upsampling'}


@pytest.fixture(scope='module')
def toy_features(tmp_path_factory):
    "pal-toybench, pal-extract once per split into one folder, pal-tal-config: the commands a researcher runs."
    from pal.toybench import toybench_cli
    d = tmp_path_factory.mktemp('toy')
    assert toybench_cli(['--out', str(d / 'T'), '--n-unlabeled', '0', '--n-train', '6', '--n-test', '3', '--no-progress']) == 0
    for s in ('train', 'test'):
        extract_cli(['--checkpoint', str(ROOT / 'checkpoints' / 'pal.pt'), '--videos', str(d / 'T' / s), '--out', str(d / 'F'), '--no-progress',
                     '--annotations', str(d / 'T' / 'annotations.json'), '--format', 'npy', 'csv', 'h5', '--rescale', '100'])
    assert tal_config_cli(['--features', str(d / 'F'), '--annotations', str(d / 'T' / 'annotations.json'), '--out', str(d / 'cfg.yaml')]) == 0
    return d


def test_actionformer_reads_the_folder_with_its_own_rules(toy_features):
    "The config, read as ActionFormer reads it, finds every video's features, and its row-time rule gives the manifest's times."
    yaml = pytest.importorskip('yaml')
    d = toy_features
    cfg = yaml.load((d / 'cfg.yaml').read_text(), Loader=yaml.FullLoader)
    ds = cfg['dataset']
    assert set(ds) == AF_DATASET_ARGS and tuple(ds) == ACTIONFORMER_DATASET_KEYS
    assert cfg['dataset_name'] == 'anet' and cfg['train_split'] == ['training'] and cfg['val_split'] == ['testing']
    assert cfg['output_folder'] and cfg['model']['n_mha_win_size'] == -1 and cfg['opt']['learning_rate'] == 1e-3
    man = json.loads((Path(ds['feat_folder']) / 'manifest.json').read_text())
    db = json.loads(Path(ds['json_file']).read_text())['database']
    label_dict = {a['label']: a['label_id'] for v in db.values() for a in v['annotations']}  # as ActionFormer builds it
    assert len(label_dict) == ds['num_classes'] and sorted(label_dict.values()) == list(range(ds['num_classes']))
    assert (ds['input_dim'], ds['feat_stride'], ds['num_frames'], ds['default_fps']) == (128, 4, 1, 8)
    assert ds['max_seq_len'] % 32 == 0 and man['max_rows'] <= ds['max_seq_len'] < man['max_rows'] + 32
    seen = 0
    for vid, v in db.items():
        if v['subset'].lower() not in cfg['train_split'] + cfg['val_split']: continue
        feats = np.load(os.path.join(ds['feat_folder'], (ds['file_prefix'] or '') + vid + ds['file_ext'])).astype(np.float32)
        m = man['videos'][vid]
        assert feats.shape == (m['rows'], ds['input_dim']) and m['subset'] == v['subset']
        fps = ds['default_fps'] if ds['default_fps'] is not None else v['fps']
        t_af = (np.arange(feats.shape[0]) * ds['feat_stride'] + 0.5 * ds['num_frames']) / fps  # ActionFormer: row -> seconds
        np.testing.assert_allclose(np.minimum(t_af, m['duration']), m['times'], atol=1e-6)
        segs = np.array([a['segment'] for a in v['annotations']], np.float32)
        grid = (segs * fps - 0.5 * ds['num_frames']) / ds['feat_stride']  # ActionFormer: seconds -> rows
        np.testing.assert_allclose(np.interp(grid, np.arange(m['rows']), m['times']), np.clip(segs, m['times'][0], m['times'][-1]), atol=1e-5)
        seen += 1
    assert seen == 9 == man['num_videos']
    info = (Path(ds['feat_folder']) / 'video_info.csv').read_text().splitlines()
    assert sorted(r.split(',')[5] for r in info[1:]) == ['testing'] * 3 + ['training'] * 6
    for vid, m in man['videos'].items():
        x = np.load(Path(ds['feat_folder']) / m['features'])
        np.testing.assert_array_equal(read_h5(Path(ds['feat_folder']) / H5_FILE)[vid], x)
        np.testing.assert_allclose(read_csv(Path(ds['feat_folder']) / 'csv_mean_100' / f'{vid}.csv'),
                                   rescale_features(x, m['times'], m['duration'], 100), rtol=0, atol=0)


def test_tal_config_refuses_what_actionformer_could_not_read(toy_features, tmp_path, capsys):
    d = toy_features
    db = json.loads((d / 'T' / 'annotations.json').read_text())
    def run(db, *extra):
        (tmp_path / 'a.json').write_text(json.dumps(db)); capsys.readouterr()
        rc = tal_config_cli(['--features', str(d / 'F'), '--annotations', str(tmp_path / 'a.json'), *extra])
        return rc, capsys.readouterr()
    more = json.loads(json.dumps(db)); more['database']['ghost'] = {**db['database']['test_0000'], 'subset': 'testing'}
    rc, o = run(more); assert rc == 1 and 'ghost' in o.err and 'no features' in o.err
    no_id = json.loads(json.dumps(db)); del next(iter(no_id['database'].values()))['annotations'][0]['label_id']
    rc, o = run(no_id); assert rc == 1 and "'label_id'" in o.err
    gap = json.loads(json.dumps(db))
    for v in gap['database'].values():
        for a in v['annotations']: a['label_id'] += 1
    rc, o = run(gap); assert rc == 1 and '0..K-1' in o.err
    rc, o = run(db, '--train-split', 'nope', '--val-split', 'nope'); assert rc == 1 and 'no video in subset' in o.err
    rc, o = run(db, '--h5', '--win-size', '19')
    cfg = __import__('yaml').safe_load(o.out)
    assert rc == 0 and cfg['dataset']['feat_folder'].endswith(H5_FILE) and cfg['dataset']['max_seq_len'] == 576
