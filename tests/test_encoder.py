"Tests for pal.encoder: clip features that move with the content, and exact 1-D RoIAlign region pooling."
import re
import pytest, torch
from hypothesis import given, settings, strategies as st
from pal.encoder import Encoder, region_pool, region_align, fit_temporal_stride, build_backbone, receptive_field, feature_offset


def video(seed, T, size, B=1):
    "Random video batch [B, 3, T, size, size] from a seed."
    return torch.randn(B, 3, T, size, size, generator=torch.Generator().manual_seed(seed))


def shift_error(enc, k, n, size, seed=0):
    "Per position max |f(video shifted by k clips)[j] - f(video)[j + k]|, relative to the feature scale."
    long = video(seed, (n + k) * enc.clip_len, size)
    with torch.no_grad():
        f, g = enc(long[:, :, :n * enc.clip_len]), enc(long[:, :, k * enc.clip_len:])
    return (g[0, :, :n - k] - f[0, :, k:]).abs().amax(0) / f.abs().max()  # [n - k]


@pytest.mark.parametrize('k', [1, 2, 3])
def test_tiny_sequence_features_shift_with_input(k):
    torch.manual_seed(0)
    enc = Encoder('tiny').eval()
    err = shift_error(enc, k, n=10, size=32)
    assert err[1:-1].max() < 1e-5  # exact away from the ends (receptive field about +-1 clip)
    assert err[0] > 1e-3 and err[-1] > 1e-3  # the ends do differ (zero padding), so the check can fail


@pytest.mark.parametrize('backbone,clip_len,margin', [('r3d_18', 8, 6), ('r2plus1d_18', 8, 6), ('r3d_18', 4, 8)])
def test_torchvision_sequence_features_shift_with_input(backbone, clip_len, margin):
    torch.manual_seed(0)
    enc = Encoder(backbone, clip_len=clip_len).eval()
    n = 2 * margin + 4
    err = shift_error(enc, 2, n=n, size=8)
    assert err.shape == (n - 2,)
    assert err[margin:-margin].max() < 1e-4
    assert err[0] > 1e-3


def test_temporal_strides_fit_clip_len():
    with torch.device('meta'):
        assert fit_temporal_stride(*build_backbone('r3d_18')[:2], 8) == 8
        assert fit_temporal_stride(*build_backbone('r3d_18')[:2], 4) == 4
        assert fit_temporal_stride(*build_backbone('r2plus1d_18')[:2], 6) == 2
        assert fit_temporal_stride(*build_backbone('tiny')[:2], 16) == 4
    enc = Encoder('r3d_18', clip_len=4)
    assert enc.temporal_stride == 4
    assert enc.layers[3][0].conv1[0].stride == (1, 2, 2)  # layer4 keeps its spatial stride
    assert enc.layers[2][0].conv1[0].stride == (2, 2, 2)


def test_output_shape_and_attributes():
    enc = Encoder('tiny', clip_len=4, width=8)
    assert (enc.clip_len, enc.out_dim) == (4, 64)
    assert enc(video(0, 24, 32, B=2)).shape == (2, 64, 6)
    with pytest.raises(ValueError, match='multiple of clip_len=4'): enc(video(0, 10, 32))
    with pytest.raises(ValueError, match='mode'): Encoder(mode='global')


def test_clip_mode_encodes_each_clip_alone():
    torch.manual_seed(0)
    enc = Encoder('tiny', mode='clip').eval()
    x = video(1, 32, 32)
    y = x.clone(); y[:, :, 8:16] = video(2, 8, 32)  # change clip 1 only
    with torch.no_grad(): d = (enc(x) - enc(y)).abs().amax(1)[0]  # [4]
    assert d[1] > 1e-3 and d[[0, 2, 3]].max() < 1e-6
    enc.mode = 'sequence'
    with torch.no_grad(): d = (enc(x) - enc(y)).abs().amax(1)[0]
    assert d[[0, 2]].min() > 1e-4  # in sequence mode the neighbours see the change


def test_region_pool_constant_and_step_values():
    const = torch.full((3, 5, 8), -1.5)
    spans = torch.tensor([[0., 8.], [1.3, 4.6], [7.2, 7.9]])
    assert torch.allclose(region_pool(const, spans), torch.full((3, 5), -1.5))
    step = torch.tensor([2.] * 3 + [7.] * 5).expand(2, 1, 8)  # block 0..2 = 2, block 3..7 = 7
    r = region_pool(step, torch.tensor([[0.2, 2.5], [3.5, 8.]]), bins=3)[:, 0]
    assert torch.allclose(r, torch.tensor([2., 7.]))
    dense = region_align(step, torch.tensor([[2., 6.], [1.5, 5.5]]), bins=4)  # [2, 1, 4]
    assert torch.allclose(dense[0, 0], torch.tensor([2., 7., 7., 7.]))  # samples at the centres of clips 2..5
    assert torch.allclose(dense[1, 0], torch.tensor([2., 4.5, 7., 7.]))  # half a clip earlier: one sample straddles the step


def test_region_pool_weights_of_a_clip_aligned_span():
    w = region_pool(torch.eye(8)[None], torch.tensor([[1., 4.]]))[0]  # channel c = one-hot at clip c
    assert torch.allclose(w, torch.tensor([1 / 32, 5 / 16, 5 / 16, 5 / 16, 1 / 32, 0, 0, 0]))


@settings(max_examples=60, deadline=None)
@given(a=st.floats(0.5, 7.4), w=st.floats(0.05, 7.0), bins=st.integers(1, 6), slope=st.floats(-3, 3), off=st.floats(-3, 3))
def test_region_pool_of_linear_features_is_value_at_span_centre(a, w, bins, slope, off):
    b = min(a + w, 7.5)  # keep samples between the first and last clip centre (no clamping)
    f = (slope * torch.arange(8.) + off).view(1, 1, 8)
    r = region_pool(f, torch.tensor([[a, b]]), bins=bins)[0, 0]
    assert abs(r.item() - (slope * ((a + b) / 2 - 0.5) + off)) < 1e-4


def test_region_pool_index_picks_rows():
    f = torch.stack([torch.full((2, 6), 1.), torch.full((2, 6), 3.)])  # [2, 2, 6]
    r = region_pool(f, torch.tensor([[0., 2.], [1., 5.], [2., 3.]]), index=torch.tensor([1, 0, 1]))
    assert torch.allclose(r[:, 0], torch.tensor([3., 1., 3.]))
    with pytest.raises(ValueError, match='index='): region_pool(f, torch.tensor([[0., 2.]]))


def test_gradients_reach_the_encoder():
    torch.manual_seed(0)
    enc = Encoder('tiny')
    r = region_pool(enc(video(3, 32, 32, B=2)), torch.tensor([[0.7, 2.2], [1., 3.5]]))
    r.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_region_pool_under_bf16_autocast_keeps_dtype_and_values():
    f = torch.randn(2, 4, 8)
    spans = torch.tensor([[0.5, 3.], [2., 7.]])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        r = region_pool(f.bfloat16(), spans)
    assert r.dtype == torch.bfloat16
    assert torch.allclose(r.float(), region_pool(f, spans), atol=3e-2)


def test_local_weights_load_and_errors(tmp_path):
    "A torchvision-style state dict (layerN.* keys, an fc head) loads; wrong or missing files name the file."
    src = Encoder('tiny', width=4)
    state = {re.sub(r'^layers\.(\d)\.', lambda m: f'layer{int(m[1]) + 1}.', k): v for k, v in src.state_dict().items()}
    assert any(k.startswith('layer3.') for k in state)
    state['fc.weight'] = torch.zeros(10, 32)
    torch.save(state, tmp_path / 'tv_style.pth')
    enc = Encoder('tiny', width=4, weights=tmp_path / 'tv_style.pth')
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), src.state_dict().values()))
    torch.save(Encoder('tiny', width=8).state_dict(), tmp_path / 'wide.pth')
    with pytest.raises(ValueError, match='wide.pth'): Encoder('tiny', width=4, weights=tmp_path / 'wide.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'): Encoder('tiny', weights=tmp_path / 'nope.pth')


@pytest.mark.parametrize('backbone,clip_len,offset', [('tiny', 8, -3 / 16), ('tiny', 4, -3 / 8), ('r3d_18', 8, -7 / 16),
                                                      ('r2plus1d_18', 8, -7 / 16), ('r3d_18', 4, -3 / 8)])
def test_feature_offset_is_half_the_stride_early(backbone, clip_len, offset):
    "Stride-2 / kernel-3 / padding-1 convs centre each output on its first input: (total stride - 1) / 2 sampled frames early."
    enc = Encoder(backbone, clip_len=clip_len)
    before, after = receptive_field(enc)
    assert feature_offset(enc) == offset == (after - before) / (2 * clip_len) == -(enc.temporal_stride - 1) / (2 * clip_len)
    enc.mode = 'clip'  # each clip alone: its reach is the clip itself
    assert receptive_field(enc) == (0, 0) and feature_offset(enc) == 0


def test_receptive_field_is_measured_once_per_architecture():
    from pal.receptive import _RF_CACHE
    assert receptive_field(Encoder('tiny', width=8)) == (8, 5)
    n = len(_RF_CACHE)
    assert receptive_field(Encoder('tiny', width=4)) == (8, 5) and len(_RF_CACHE) == n  # the width does not change the reach
    enc = Encoder('tiny', clip_len=2)  # stride 2 only (layer2 un-strided): another architecture, a new measurement
    assert receptive_field(enc) == (6, 5) and len(_RF_CACHE) == n + 1
    assert feature_offset(enc) == -(2 - 1) / (2 * 2)
    assert receptive_field(enc, size=16) == (6, 5)  # the probe's frame size does not matter


def test_names_moved_to_pal_receptive_still_import_from_pal_encoder():
    "receptive_field and load_backbone_weights live in pal.receptive (appendix a04a); pal.encoder hands out the same objects."
    import pal.encoder, pal.receptive
    for n in ('receptive_field', 'load_backbone_weights', '_RF_CACHE', '_rf_key', '_measure_receptive_field'):
        assert getattr(pal.encoder, n) is getattr(pal.receptive, n), n
    with pytest.raises(AttributeError, match='no_such_name'): pal.encoder.no_such_name


def test_frame_influence_reaches_the_receptive_field_and_leaves_no_gradient():
    from pal.receptive import frame_influence
    torch.manual_seed(0)
    enc = Encoder('tiny').eval()  # in training mode BatchNorm's batch statistics let every frame reach every feature
    nz = frame_influence(enc, 3, T=64, size=16).nonzero().flatten()
    before, after = receptive_field(enc)
    assert (nz.min().item(), nz.max().item()) == (24 - before, 31 + after) == (16, 36)
    assert all(p.grad is None for p in enc.parameters())  # a probe, not a training step
    with pytest.raises(ValueError, match='eval mode'): frame_influence(Encoder('tiny'), 3)


def bright_frame_rows(enc, n, ts, size):
    "Response magnitude of each of the n clip features `[len(ts), n]` to a black video with one bright frame at t, for each t."
    x = torch.zeros(len(ts) + 1, 3, n * enc.clip_len, size, size)  # the last video stays black
    for i, t in enumerate(ts): x[i, :, t] = 3.0
    with torch.no_grad(): f = enc(x).abs().amax(1)  # [len(ts) + 1, n]
    assert f[-1].max() == 0  # black in, exactly zero out (no biases, batch norm at its initial statistics): rows outside reach stay 0
    return f[:-1]


@pytest.mark.parametrize('backbone,clip_len,n,t0,size', [('tiny', 8, 10, 40, 16), ('tiny', 4, 14, 28, 16),
                                                         ('r3d_18', 8, 18, 64, 8), ('r2plus1d_18', 8, 18, 64, 8)])
def test_single_bright_frame_lands_at_the_measured_centre(backbone, clip_len, n, t0, size):
    "A bright frame at t: the rows that respond sit symmetrically about t at their measured centres (not at their clip centres)."
    torch.manual_seed(0)
    enc = Encoder(backbone, clip_len=clip_len).eval()
    L, d = clip_len, feature_offset(enc)
    before, after = receptive_field(enc)
    half = (before + after + L - 1) / 2  # half the receptive field of a clip, in sampled frames
    ts = torch.arange(t0, t0 + L)  # every position within one clip, away from the ends
    resp = bright_frame_rows(enc, n, ts.tolist(), size)  # [L, n]
    nominal = torch.arange(n) * L + (L - 1) / 2  # clip centres, in sampled frames (frame k at k)
    measured = nominal + d * L
    mids, centroids = [], []
    for t, r in zip(ts, resp):
        rows = (r > 0).nonzero().flatten()
        assert 0 < rows[0] and rows[-1] < n - 1 and len(rows) == rows[-1] - rows[0] + 1  # one run of rows, inside the video
        assert torch.equal(r > 0, (measured - t).abs() <= half)  # exactly the rows whose measured centre is within reach of t
        assert r[(measured - t).abs().argmin()] > 0  # the row centred nearest to t responds
        mids.append((measured[rows[0]] + measured[rows[-1]]) / 2 - t)
        centroids.append((r * measured).sum() / r.sum() - t)  # response-weighted
    mids, centroids = torch.stack(mids) / L, torch.stack(centroids) / L  # in clips
    assert mids.abs().max() <= 0.5  # each run is centred on t within half a clip (rows are a clip apart)
    assert abs(mids.mean()) < 0.02  # and exactly on t on average over the clip's positions...
    assert abs(mids.mean() - d) > 0.15  # ...where the clip centres would be late by the offset
    assert abs(centroids.mean()) < 0.1  # the response-weighted centre of the rows lands on t too (random weights)


def test_region_pool_offset_reads_the_features_centred_on_the_span():
    f = torch.randn(2, 3, 8)
    spans = torch.tensor([[1.3, 4.6], [2., 7.]])
    assert torch.allclose(region_align(f, spans, offset=-0.375), region_align(f, spans + 0.375), atol=1e-6)
    assert torch.allclose(region_pool(f, spans, offset=0.0), region_pool(f, spans))
    lin = torch.arange(8.).expand(2, 1, 8)  # feature j centred at j + 0.5 + offset: the span centre is feature (a + b) / 2 - 0.5 - offset
    assert torch.allclose(region_pool(lin, spans, offset=-0.4375)[:, 0], spans.mean(1) - 0.5 + 0.4375, atol=1e-5)
    rows = region_pool(f, torch.tensor([[0.5, 2.], [3., 6.], [1., 4.]]), index=torch.tensor([1, 0, 1]), offset=-0.25)
    assert torch.allclose(rows, region_pool(f, torch.tensor([[0.75, 2.25], [3.25, 6.25], [1.25, 4.25]]), index=torch.tensor([1, 0, 1])))


def test_region_pool_at_the_measured_centre_balances_the_background():
    "Read at clip centres, a region feature takes about twice as much input from before its span as from after it; at the measured centre, alike."
    torch.manual_seed(0)
    enc = Encoder('tiny', clip_len=4).eval()
    a, b, n = 6.25, 8.0, 16

    def shares(offset):
        x = video(7, n * 4, 32).requires_grad_()
        region_pool(enc(x), torch.tensor([[a, b]]), offset=offset).sum().backward()
        g = x.grad.abs().sum((0, 1, 3, 4)); u = torch.arange(len(g)) / 4  # frame k covers clip units [u, u + 1/4)
        return (g[u < a].sum() / g.sum()).item(), (g[u >= b].sum() / g.sum()).item()
    before, after = shares(0.0)
    assert before > 1.8 * after
    before, after = shares(feature_offset(enc))
    assert abs(before - after) < 0.05
