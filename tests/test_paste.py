"Tests for pal.paste (03) and pal.synthesis (a04): exact frames, batched == per-sample, augmentation consistency, explorer, pal-synth."
import shutil
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
import torch
from hypothesis import given, settings, assume, strategies as st

from pal.paste import synthesize, load_bank, show_pair, show_scale_sweep, draw_pair, explore
from pal.synthesis import (collate_banks, paste_batch, synth_batch, AugmentConfig, AugmentParams, sample_augment,
                           apply_augment, augment, denormalize, show_batch, synth_cli, synth_sample)
from pal.sampling import PasteConfig, sample_plan
from pal.samples import sample_dir, read_index_code
from pal.video import VideoReader

SIZE = (48, 64)
NAMES = ('plaid', 'checker', 'dots', 'rings', 'stripes_odd', 'waves')


@pytest.fixture(scope='module')
def readers():
    return [VideoReader(sample_dir() / n, size=SIZE) for n in
            ('plaid.mp4', 'checker.mp4', 'dots.avi', 'rings.avi', 'stripes_odd.mkv', 'waves.webm')]


@pytest.fixture(scope='module')
def every_frame(readers):
    "All frames of every sample video, decoded once: the reference a pasted frame must equal."
    return [r.get(torch.arange(r.num_frames)) for r in readers]


@st.composite
def configs(draw):
    lo = draw(st.integers(1, 3))
    smin = draw(st.floats(0.3, 1.5))
    kw = dict(n_clips=draw(st.integers(3, 8)), clip_len=draw(st.integers(2, 8)),
              frame_stride=draw(st.integers(1, 3)), min_region_clips=lo, max_region_clips=lo + draw(st.integers(0, 1)),
              min_scale=smin, max_scale=smin * draw(st.floats(1, 3)), same_region=draw(st.booleans()),
              min_bg_frames=draw(st.integers(1, 4)), position=draw(st.sampled_from(['any', 'inside'])))
    try: return PasteConfig(**kw)
    except ValueError: assume(False)  # no room to paste with this T and margin


@settings(max_examples=20, deadline=None)
@given(cfg=configs(), trio=st.permutations(range(6)), seed=st.integers(0, 10_000), alpha=st.sampled_from([1.0, 1.0, 0.5]))
def test_every_frame_is_the_planned_frame(readers, every_frame, cfg, trio, seed, alpha):
    s, b0, b1 = trio[:3]
    plan = sample_plan(readers[s].num_frames, (readers[b0].num_frames, readers[b1].num_frames), cfg, seed=seed)
    pair = synthesize(plan, readers[s], (readers[b0], readers[b1]), alpha=alpha)
    assert pair.shape == (2, cfg.T, *SIZE, 3) and pair.dtype == torch.uint8
    for i, b in enumerate((b0, b1)):
        for t in range(cfg.T):
            bg = every_frame[b][plan.bg_idx[i, t]]
            if plan.pasted[i, t]:
                src = every_frame[s][plan.frame_idx[i, t]]
                want = src if alpha == 1 else (alpha * src.float() + (1 - alpha) * bg.float()).round().to(torch.uint8)
            else: want = bg
            assert torch.equal(pair[i, t], want), (i, t)


def test_index_codes_read_back(readers):
    "The frame number drawn in each sample frame reads back as plan.frame_idx (native size, so the code is crisp)."
    A, B, C = (VideoReader(sample_dir() / n, size=(72, 96)) for n in ('checker.mp4', 'dots.avi', 'waves.webm'))
    plan = sample_plan(A.num_frames, (B.num_frames, C.num_frames), seed=7)
    pair = synthesize(plan, A, (B, C))
    hw = lambda r: (r.info.height, r.info.width)
    for i, bg in enumerate((B, C)):
        got = [read_index_code(pair[i, t], src_hw=hw(A if plan.pasted[i, t] else bg)) for t in range(plan.T)]
        assert got == plan.frame_idx[i].tolist()


def test_decodes_each_frame_once(readers):
    calls = []
    class Spy:
        def __init__(self, r): self.r, self.height, self.width, self.path = r, r.height, r.width, r.path
        def get(self, idx): calls.append(list(idx)); return self.r.get(idx)
    A, B, C = (Spy(r) for r in readers[:3])
    plan = sample_plan(A.r.num_frames, (B.r.num_frames, C.r.num_frames), seed=0, scale=0.5)  # slow motion repeats frames
    synthesize(plan, A, (B, C))
    assert len(calls) == 3 and all(len(c) == len(set(c)) for c in calls)
    assert sorted(calls[0]) == sorted(set(plan.frame_idx[plan.pasted].tolist()))


def test_different_sizes_rejected(readers):
    other = VideoReader(sample_dir() / 'waves.webm', size=(32, 32))
    plan = sample_plan(readers[0].num_frames, (readers[1].num_frames, other.num_frames), seed=0)
    with pytest.raises(ValueError, match='waves.webm 32x32'): synthesize(plan, readers[0], (readers[1], other))


@pytest.mark.parametrize('alpha', [1.0, 0.3])
def test_batched_equals_per_sample(readers, alpha):
    batch, plans = synth_batch(readers[:4], seed=11, alpha=alpha)
    assert batch.shape == (4, 2, 64, *SIZE, 3)
    for b, p in enumerate(plans):
        assert torch.equal(batch[b], synthesize(p, readers[b], (readers[(b + 1) % 4], readers[(b + 2) % 4]), alpha=alpha))
    if alpha == 1:
        again, plans2 = synth_batch(readers[:4], seed=11)
        assert torch.equal(again, batch) and [p.span for p in plans2] == [p.span for p in plans]
        with pytest.raises(ValueError, match='at least 3'): synth_batch(readers[:2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no GPU')
def test_batched_on_gpu(readers):
    cpu, _ = synth_batch(readers[:4], seed=2, alpha=0.5)
    gpu, _ = synth_batch(readers[:4], seed=2, alpha=0.5, device='cuda')
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
    a, b = augment(cpu, generator=5), augment(gpu, generator=5)
    assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1.01 / 255 / min(AugmentConfig().std))  # CPU resizes uint8: within one grey level


def test_paste_batch_handmade():
    "Two tiny banks whose frames are constant images 0..N-1: the output values are the positions."
    frames = torch.arange(6, dtype=torch.uint8).view(1, 6, 1, 1, 1).expand(2, 6, 2, 2, 3).clone()
    frames[1] += 10
    src = torch.tensor([[[0, 1, 2]] * 2, [[3, 3, 3]] * 2])
    bg = torch.tensor([[[4, 5, 4]] * 2, [[5, 5, 5]] * 2])
    pasted = torch.tensor([[[True, False, True], [False, False, True]], [[False, True, False]] * 2])
    out = paste_batch(frames, src, bg, pasted)[..., 0, 0, 0]
    assert out.tolist() == [[[0, 5, 2], [4, 5, 2]], [[15, 13, 15], [15, 13, 15]]]
    half = paste_batch(frames, src, bg, pasted, alpha=0.5)[..., 0, 0, 0]
    assert half.tolist() == [[[2, 5, 3], [4, 5, 3]], [[15, 14, 15], [15, 14, 15]]]  # round-half-even: (0+4)/2, (2+4)/2, (13+15)/2


def _plain(size):
    return AugmentConfig(size=size, brightness=0, contrast=0, saturation=0, hue=0, gray_p=0, mean=(0, 0, 0), std=(1, 1, 1))


def test_augment_same_crop_for_pasted_and_background(readers):
    "With integer crop boxes of the output size, augmentation is slicing: identical for pasted and background frames."
    A, B, C = readers[:3]
    plan = sample_plan(A.num_frames, (B.num_frames, C.num_frames), seed=3)
    pair = synthesize(plan, A, (B, C))  # [2, T, 48, 64, 3], mixes pasted and background frames
    params = AugmentParams(box=torch.tensor([[3., 5, 32, 40], [10, 20, 32, 40]]), flip=torch.tensor([True, False]),
                           color=torch.tensor([[1., 1, 1, 0]] * 2), gray=torch.tensor([False, False]))
    out = (apply_augment(pair, params, _plain((32, 40))) * 255).round().to(torch.uint8).movedim(1, -1)
    assert torch.equal(out[0], pair[0, :, 3:35, 5:45].flip(2))
    assert torch.equal(out[1], pair[1, :, 10:42, 20:60])


def test_augment_one_transform_per_video():
    "Frames = one image + a per-frame grey offset: after any crop/flip/resize they differ by the same offset."
    g = torch.Generator().manual_seed(1)
    img = torch.rand(3, 1, 40, 50, 3, generator=g) * 150
    offs = torch.tensor([0., 30, 60, 90, 0]).view(1, 5, 1, 1, 1)
    vids = (img + offs).round().to(torch.uint8)  # [3, 5, 40, 50, 3]
    out = augment(vids, _plain((24, 24)), generator=4)  # [3, 3, 5, 24, 24]
    for v in range(3):
        for t, o in enumerate(offs.flatten().tolist()):
            assert torch.allclose(out[v, :, t] - out[v, :, 0], torch.full_like(out[v, :, 0], o / 255), atol=1e-4)
    # independent draws: the three videos (same size, random content) get different crops
    p = sample_augment(3, 40, 50, _plain((24, 24)), generator=4)
    assert len({tuple(b.tolist()) for b in p.box}) == 3


def test_augment_colour_and_normalization():
    grey = torch.full((2, 3, 8, 8, 3), 100, dtype=torch.uint8)
    cfg = AugmentConfig(size=(4, 4))
    out = augment(grey, AugmentConfig(size=(4, 4), jitter_p=0, gray_p=0), generator=0)  # crop only
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1, 1), torch.tensor(cfg.std).view(3, 1, 1, 1)
    assert out.shape == (2, 3, 3, 4, 4) and out.dtype == torch.float32
    assert torch.allclose(out, ((100 / 255 - mean) / std).expand_as(out), atol=1e-5)
    assert torch.equal(denormalize(out, cfg), torch.full((2, 3, 4, 4, 3), 100, dtype=torch.uint8))
    # brightness 1.5 on a grey video: 150; contrast/saturation/hue leave a uniform grey video alone
    p = AugmentParams(box=torch.tensor([[0., 0, 8, 8]]), flip=torch.tensor([False]),
                      color=torch.tensor([[1.5, 0.7, 1.3, 0.2]]), gray=torch.tensor([False]))
    o = apply_augment(grey[:1], p, _plain((8, 8)))
    assert torch.allclose(o, torch.full_like(o, 150 / 255), atol=1e-4)
    # hue rotation keeps grey (luma) but changes a coloured pixel; saturation 0 gives grey
    red = torch.zeros(1, 1, 4, 4, 3, dtype=torch.uint8); red[..., 0] = 200
    p.box = torch.tensor([[0., 0, 4, 4]]); p.color = torch.tensor([[1., 1, 0, 0]])
    o = apply_augment(red, p, _plain((4, 4)))
    assert torch.allclose(o, torch.full_like(o, 0.299 * 200 / 255), atol=1e-4)
    p.color = torch.tensor([[1., 1, 1, 0.25]])
    o = apply_augment(red, p, _plain((4, 4)))
    assert not torch.allclose(o[0, 0], torch.full_like(o[0, 0], 200 / 255), atol=0.05)


def test_augment_deterministic():
    v = torch.randint(0, 255, (2, 2, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a, b = augment(v, generator=9), augment(v, generator=9)
    assert a.shape == (2, 2, 3, 4, 112, 112) and torch.equal(a, b)
    assert not torch.equal(a, augment(v, generator=10))


def test_figures(readers):
    A, B, C = readers[:3]
    plan = sample_plan(A.num_frames, (B.num_frames, C.num_frames), seed=0)
    fig = show_pair(synthesize(plan, A, (B, C)), plan, title='t')
    outlined = [p for p in fig.axes[0].patches]
    assert len(outlined) == int(plan.pasted[0, ::4].sum())
    fig = show_scale_sweep(A, B, scales=(0.5, 2.0))
    assert len(fig.axes) == 2
    batch, plans = synth_batch(readers[:3], seed=0)
    fig = show_batch(augment(batch, AugmentConfig(size=(32, 32)), generator=0), plans, cfg=AugmentConfig(size=(32, 32)))
    assert len(fig.axes) == 6
    plt.close('all')


def test_explorer_redraws(readers):
    videos = readers[:3]
    for seed, k, s, f in ((0, 2, 1.0, 0.5), (5, 3.5, (0.5, 2.0), (0.0, 1.0))):
        fig = draw_pair(videos, seed, k, s, f)
        p = fig.plan
        want_s = s if isinstance(s, tuple) else (s, s)
        assert p.scale == want_s
        assert [e - b for b, e in p.span] == [min(round(k * 8 / x), 56) for x in want_s]
        if f == (0.0, 1.0): assert p.span[0][0] == 0 and p.span[1][1] == 64
        plt.close(fig)
    w = explore(readers)
    ctl = {c.description: c for c in w.kwargs_widgets}
    assert list(ctl) == ['source', 'background_B', 'background_C', 'seed', 'region_clips', 'scale_B', 'scale_C',
                         'position_B', 'position_C']
    # the starting values notebook 03 measures the seed's reach with
    assert w.kwargs == dict(source=0, background_B=1, background_C=2, seed=0, region_clips=2.0, scale_B=1.0, scale_C=1.0,
                            position_B=0.2, position_C=0.8)
    assert w.result.plan.src_len == readers[0].num_frames and w.result.plan.bg_lens == (readers[1].num_frames, readers[2].num_frames)
    ctl['scale_B'].value = 2.0
    ctl['region_clips'].value = 3.0
    assert w.result.plan.scale[0] == 2.0 and w.result.plan.span[0][1] - w.result.plan.span[0][0] == 12
    # the menus choose the videos: the fourth one as the source
    ctl['source'].value = 3
    assert w.result.plan.src_len == readers[3].num_frames
    assert readers[3].path.name in w.result.get_suptitle()
    # the seed draws the source starts (and nothing the sliders force): another seed, another plan, same spans
    before = w.result.plan
    ctl['seed'].value = 1
    after = w.result.plan
    assert after.span == before.span and after.scale == before.scale and after.src_start != before.src_start
    again = draw_pair([readers[3], readers[1], readers[2]], 1, 3.0, (2.0, 1.0), (0.2, 0.8)).plan
    assert torch.equal(after.frame_idx, again.frame_idx) and torch.equal(after.video_idx, again.video_idx)
    plt.close('all')


def test_explorer_seed_moves_a_long_background(readers):
    "A background longer than the 128-frame window: the seed moves the window; a shorter one is played whole."
    long = VideoReader(sample_dir() / 'bframes_pts_eq_dts.mp4', size=SIZE)
    assert long.num_frames > 128 > max(r.num_frames for r in readers)
    w = explore([readers[0], long, readers[1]])
    ctl = {c.description: c for c in w.kwargs_widgets}
    starts = set()
    for seed in range(8):
        ctl['seed'].value = seed
        starts.add(w.result.plan.bg_start)
    assert len({b for b, _ in starts}) > 3 and {c for _, c in starts} == {0}
    assert max(b for b, _ in starts) <= long.num_frames - 128
    plt.close('all')


def test_explorer_rejects_bad_videos(readers):
    with pytest.raises(ValueError, match='at least 3 videos'): explore(readers[:2])
    other = VideoReader(sample_dir() / 'waves.webm', size=(32, 32))
    with pytest.raises(ValueError, match='waves.webm 32x32'): explore([readers[0], readers[1], other])


def test_synth_cli_on_samples(tmp_path, capsys):
    out = tmp_path / 'sub' / 'pal.png'
    assert synth_cli(['--videos', str(sample_dir()), '--out', str(out), '--seed', '5', '--size', '48', '64']) is None  # exit 0
    assert out.stat().st_size > 10_000
    assert str(out) in capsys.readouterr().out
    plan = synth_sample(sample_dir(), tmp_path / 'a.png', seed=5, size=(48, 64))
    again = synth_sample(sample_dir(), tmp_path / 'b.png', seed=5, size=(48, 64))
    assert plan.T == 64 and again.span == plan.span and torch.equal(again.frame_idx, plan.frame_idx)
    from pal.checkpoint import TrainConfig  # pal-synth draws what pal-pretrain trains on: by default one span pasted twice
    assert plan.cfg == TrainConfig().paste and plan.cfg.same_region and plan.src_start[0] == plan.src_start[1]


def test_synth_cli_too_few_good_videos(tmp_path, capsys):
    for n in ('plaid.mp4', 'waves.webm'): shutil.copy(sample_dir() / n, tmp_path / n)
    (tmp_path / 'broken.mp4').write_bytes(b'not a video')
    (tmp_path / 'empty.avi').write_bytes(b'')
    with pytest.raises(SystemExit) as e: synth_cli(['--videos', str(tmp_path), '--out', str(tmp_path / 'x.png')])
    assert isinstance(e.value.code, str)  # sys.exit(message): printed to stderr, exit status 1
    assert 'need at least 3 readable videos' in str(e.value.code) and 'found 2 of 4' in str(e.value.code)
    err = capsys.readouterr().err
    assert 'broken.mp4' in err and 'empty.avi' in err
    assert not (tmp_path / 'x.png').exists()
    with pytest.raises(SystemExit, match='not a folder'): synth_cli(['--videos', str(tmp_path / 'nope'), '--out', 'x.png'])



def test_moved_names_still_import_from_paste():
    "Names that moved to pal.synthesis (a04) are the same objects when imported from pal.paste; unknown names still fail."
    import pal.paste, pal.synthesis
    for name in pal.synthesis.__all__ + ['_LUMA', '_crop_resize', '_jitter_']:  # benchmarks/ use the private ones
        assert getattr(pal.paste, name) is getattr(pal.synthesis, name), name
    with pytest.raises(AttributeError, match='no attribute'): pal.paste.no_such_name
    with pytest.raises(ImportError): from pal.paste import no_such_name  # noqa: F401
