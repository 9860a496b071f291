"Tests for pal.features: rows and times as the manifest claims, seamless windowed extraction, bad files, shipped checkpoints."
import json, math, shutil, threading
from pathlib import Path

import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st

from pal.encoder import Encoder
from pal.encoder import feature_offset
from pal.features import (ClipGrid, extract, extract_cli, extract_features, feature_names, load_model, random_encoder,
                          receptive_field, context_margin, window_plan, save_encoder, slim_checkpoint, preprocess, ExtractError,
                          auto_jobs, row_times)
from pal.samples import sample_dir
from pal.sampling import PasteConfig
from pal.train import TrainConfig, TrainingError, load_encoder
from pal.video import VideoReader, VideoError

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
    man = extract('random', vids, d / 'out', window=3, progress=False, log=lines.append)
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
    from pal.localize import load_features
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
    np.testing.assert_array_equal(starts, t[g.starts()])  # the time of each row's first frame
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
