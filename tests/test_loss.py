"Tests for pal.loss (and the appendix modules pal.moco, pal.receptive it uses): InfoNCE values, masks, MoCo queue, the PAL and video-level objectives, autocast, gathering, shuffle-BN."
import math
import pytest, torch
import torch.nn.functional as F
from pal.encoder import Encoder, region_pool, region_align, feature_offset
from pal.loss import (info_nce, symmetric_info_nce, gather_features, rank_offset, ProjectionHead, MoCo,
                      background_spans, background_gap, frame_weights, shuffle_groups, PAL, VideoContrast)
from pal.moco import shuffle_bn_plan, embed_in_groups


def unit(*shape, seed=0):
    "Random unit vectors along the last dim."
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_info_nce_hand_computed_3x3():
    q = torch.tensor([[1., 0], [0, 1], [0.6, 0.8]])
    k = torch.tensor([[1., 0], [0.6, 0.8], [0, 1]])
    # similarities: rows (1, .6, 0), (0, .8, 1), (.6, 1, .8); positives on the diagonal; tau = 0.1
    want = (-math.log(math.exp(10) / (math.exp(10) + math.exp(6) + math.exp(0)))
            - math.log(math.exp(8) / (math.exp(0) + math.exp(8) + math.exp(10)))
            - math.log(math.exp(8) / (math.exp(6) + math.exp(10) + math.exp(8)))) / 3
    loss, stats = info_nce(q, k)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert stats['pos_sim'].item() == pytest.approx(2.6 / 3, abs=1e-6)
    assert stats['neg_sim'].item() == pytest.approx(3.2 / 6, abs=1e-6)
    assert stats['top1'].item() == pytest.approx(1 / 3)  # only query 0 ranks its key first
    assert all(v.ndim == 0 and not v.requires_grad for v in stats.values())
    t2 = info_nce(q, k, temperature=0.5)[0].item()
    assert t2 == pytest.approx((-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2) + 1))
                                - math.log(math.exp(1.6) / (1 + math.exp(1.6) + math.exp(2)))
                                - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(2) + math.exp(1.6)))) / 3, abs=1e-5)


def test_info_nce_equals_cross_entropy_over_the_similarity_matrix():
    q, k = unit(9, 16, seed=1), unit(9, 16, seed=2)
    loss, _ = info_nce(q, k, temperature=0.2)
    assert torch.allclose(loss, F.cross_entropy(q @ k.T / 0.2, torch.arange(9)), atol=1e-6)


def test_identical_views_give_lower_loss_than_random_ones():
    z = unit(32, 64, seed=3)
    same, s_same = symmetric_info_nce(z, z)
    rand, s_rand = symmetric_info_nce(z, unit(32, 64, seed=4))
    assert same < 0.1 < math.log(32) < rand
    assert s_same['top1'] == 1 and s_rand['top1'] < 0.5


def test_masks_ids_queue_and_hard_negatives():
    q, k = unit(4, 8, seed=5), unit(4, 8, seed=6)
    base, _ = info_nce(q, k)
    # ids: rows 0 and 1 share a source, so they are not each other's negatives
    l_ids, _ = info_nce(q, k, ids=torch.tensor([7, 7, 8, 9]))
    logits = q @ k.T / 0.1
    logits[0, 1] = logits[1, 0] = float('-inf')
    assert torch.allclose(l_ids, F.cross_entropy(logits, torch.arange(4)), atol=1e-6)
    # an empty queue changes nothing
    queue = unit(5, 8, seed=7)
    assert torch.allclose(info_nce(q, k, queue=queue, queue_valid=torch.zeros(5, dtype=torch.bool))[0], base)
    # a queue holding this batch's keys again: each query's own source is masked, the others count twice
    eye = torch.eye(4, dtype=torch.bool)
    s_neg = (q @ k.T).masked_fill(eye, float('-inf'))
    twice = F.cross_entropy(torch.cat([(q * k).sum(1, keepdim=True), s_neg, s_neg], 1) / 0.1, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(info_nce(q, k, ids=torch.arange(4), queue=k, queue_ids=torch.arange(4))[0], twice, atol=1e-6)
    # a valid queue adds its negatives: the MoCo form with labels 0
    l_q, s_q = info_nce(q, k, queue=queue)
    neg = torch.cat([(q @ k.T).masked_fill(torch.eye(4, dtype=torch.bool), float('-inf')), q @ queue.T], 1)
    want = F.cross_entropy(torch.cat([(q * k).sum(1, keepdim=True), neg], 1) / 0.1, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(l_q, want, atol=1e-6)
    assert s_q['neg_sim'].item() == pytest.approx(((q @ k.T).sum() - (q * k).sum() + (q @ queue.T).sum()).item() / (12 + 20), abs=1e-5)
    # hard negatives: masked ones change nothing, valid ones raise the loss
    hard = torch.stack([k, unit(4, 8, seed=8)], 1)  # [4, 2, 8]
    assert torch.allclose(info_nce(q, k, hard=hard, hard_valid=torch.zeros(4, 2, dtype=torch.bool))[0], base)
    l_h, _ = info_nce(q, k, hard=hard[:, :1])  # each key itself as a hard negative
    assert l_h > base


def test_hard_negative_equal_to_positive_adds_log2_when_positive_dominates():
    q = torch.eye(3)
    k = torch.eye(3)
    base, _ = info_nce(q, k)  # negatives at similarity 0: tiny loss
    l_h, _ = info_nce(q, k, hard=k[:, None])
    assert l_h.item() == pytest.approx(math.log(2 + 2 * math.exp(-10)), abs=1e-6)
    assert base.item() == pytest.approx(math.log(1 + 2 * math.exp(-10)), abs=1e-6)


def test_projection_head_is_unit_norm_on_any_leading_shape():
    head = ProjectionHead(12, 5, hidden_dim=7)
    out = head(torch.randn(2, 3, 12))
    assert out.shape == (2, 3, 5)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 3), atol=1e-5)


def test_moco_queue_wraps_updates_and_round_trips_state_dict():
    enc, head = torch.nn.Linear(3, 3), ProjectionHead(3, 2)
    m = MoCo(enc, head, queue_size=4, momentum=0.9)
    assert not any(p.requires_grad for p in m.parameters())
    assert not m.negatives()['queue_valid'].any()
    m.enqueue(torch.ones(3, 2), torch.tensor([1, 2, 3]))
    m.enqueue(torch.full((3, 2), 2.), torch.tensor([4, 5, 6]))  # slots 3, 0, 1 (wraps)
    assert m.queue_ids.tolist() == [5, 6, 3, 4] and m.ptr.item() == 2 and m.filled.item() == 4
    assert m.queue[:, 0].tolist() == [2., 2., 1., 2.]
    m.enqueue(torch.arange(12.).view(6, 2), torch.arange(6))  # more than the queue: the last 4 stay
    assert sorted(m.queue_ids.tolist()) == [2, 3, 4, 5] and m.ptr.item() == 2
    with torch.no_grad(): enc.weight.fill_(1.); head.net[0].bias.fill_(2.)
    k_w, k_b = m.key_encoder.weight.clone(), m.key_head.net[0].bias.clone()
    m.update(enc, head)
    assert torch.allclose(m.key_encoder.weight, 0.9 * k_w + 0.1)
    assert torch.allclose(m.key_head.net[0].bias, 0.9 * k_b + 0.2)
    m2 = MoCo(torch.nn.Linear(3, 3), ProjectionHead(3, 2), queue_size=4)
    m2.load_state_dict(m.state_dict())
    for name in ('queue', 'queue_ids', 'ptr', 'filled', 'key_encoder.weight'):
        assert torch.equal(m2.state_dict()[name], m.state_dict()[name])


def test_background_spans_values():
    bg, valid = background_spans(torch.tensor([[1.5, 4.], [0., 7.5], [6.25, 8.]]), 8, min_len=1.0)
    assert bg.tolist() == [[[0, 1.5], [4, 8]], [[0, 0], [7.5, 8]], [[0, 6.25], [8, 8]]]
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    bg, valid = background_spans(torch.tensor([[1.5, 4.], [3., 5.]]), 8, min_len=1.0, gap=1.25)
    assert bg.tolist() == [[[0, 0.25], [5.25, 8]], [[0, 1.75], [6.25, 8]]]
    assert valid.tolist() == [[False, True], [True, True]]


def test_frame_weights_of_pasted_spans():
    "Share of a region feature's input that comes from its span: about half for 1 clip, three quarters for 2 (tiny, 8-frame clips)."
    enc = Encoder('tiny', width=4)
    w = frame_weights(enc, torch.tensor([[3., 4.], [3., 5.], [0., 8.]]), 8)
    assert w.shape == (3, 64) and torch.allclose(w.sum(1), torch.ones(3)) and (w >= 0).all()
    assert 0.4 < w[0, 24:32].sum() < 0.6 and 0.65 < w[1, 24:40].sum() < 0.8
    assert w[0, :8].sum() == 0 and w[0, 56:].sum() == 0  # the receptive field ends a clip or so away
    assert frame_weights(Encoder('tiny', 'clip', width=4), torch.tensor([[3., 4.]]), 8)[0, :16].sum() == 0


def test_background_negatives_keep_away_from_the_paste():
    "With the default gap a background piece takes at most 2 % of its input from the paste side; without one, a third."
    enc = Encoder('tiny', clip_len=4, width=4)  # the benchmark's clips: 4 frames, so the reach is 2 clips
    model = PAL(enc, dim=8, background_negatives=True)
    assert model.bg_gap == background_gap(enc) == 1.75
    assert background_gap(enc, offset=0) == 2.25  # pooled at the nominal clip centres the reach after a paste is longer
    assert PAL(enc, dim=8).bg_gap == 0 and PAL(enc, dim=8, background_negatives=True, bg_gap=1).bg_gap == 1
    spans = torch.tensor([[1.0, 3.5], [1.25, 3.0]])  # pastes ending at 3.5 and 3 clips of 12
    bg, valid = background_spans(spans, 12, model.min_background, model.bg_gap)
    after = bg[:, 1]
    assert valid[:, 1].all() and (after[:, 0] - spans[:, 1] == 1.75).all()
    w = frame_weights(enc, after, 12)
    assert all(w[i, :int(spans[i, 1] * 4)].sum() <= 0.02 for i in range(2))
    w0 = frame_weights(enc, torch.stack([spans[:, 1], spans[:, 1] + 1], 1), 12)  # the old pieces, right after the paste
    assert all(w0[i, :int(spans[i, 1] * 4)].sum() > 0.3 for i in range(2))


def small_batch(B=3, T=16, size=16, seed=0):
    "Random two-view batch [B, 2, 3, T, size, size] and spans [B, 2, 2] in clip units (clip_len 4)."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 2, 3, T, size, size, generator=g)
    a = torch.rand(B, 2, generator=g) * 1.5
    return x, torch.stack([a, a + 1 + torch.rand(B, 2, generator=g)], -1)


def test_pal_pooled_and_dense_equal_their_definitions():
    "Pooled and dense PAL losses from their definitions, the regions pooled at the clip features' measured centres."
    torch.manual_seed(0)
    x, spans = small_batch()
    assert PAL(Encoder('tiny', clip_len=4, width=4)).offset == feature_offset(Encoder('tiny', clip_len=4)) == -0.375
    assert PAL(Encoder('tiny', clip_len=4, width=4), offset=0).offset == 0
    for align, mask in (('pooled', True), ('dense', True), ('dense', False)):
        model = PAL(Encoder('tiny', clip_len=4, width=4), dim=8, bins=2, align=align, mask_region_bins=mask).eval()
        loss, stats = model(x, spans)
        with torch.no_grad():
            f = model.encoder(x.flatten(0, 1))  # [6, C, 4]
            if align == 'pooled':
                z = model.head(region_pool(f, spans.view(6, 2), bins=2, offset=model.offset)).view(3, 2, -1)
                want, _ = symmetric_info_nce(z[:, 0], z[:, 1])
            else:  # each bin a query, aligned with the same bin of the other video; by default the region's other bins are no negatives
                z = model.head(region_align(f, spans.view(6, 2), bins=2, offset=model.offset).transpose(1, 2)).view(3, 2, 2, -1)
                ids = torch.arange(3).repeat_interleave(2) if mask else None
                want, _ = symmetric_info_nce(z[:, 0].reshape(6, -1), z[:, 1].reshape(6, -1), ids=ids)
        assert loss.item() == pytest.approx(want.item(), abs=1e-5), (align, mask)


def test_dense_bins_of_one_region_are_not_negatives():
    "Dense mode: a short span's neighbouring bins are near-identical; by default they are masked out of each other's negatives."
    torch.manual_seed(0)
    x, spans = small_batch()
    spans = spans.clone(); spans[..., 1] = spans[..., 0] + 0.5  # half-clip spans: bins interpolate the same clip features
    model = PAL(Encoder('tiny', clip_len=4, width=4), dim=8, bins=4, align='dense').eval()
    with torch.no_grad():
        z, _, _ = model.embed(x, spans, model.encoder, model.head)  # [3, 2, 4, D]
        sim = torch.einsum('bkd,bjd->bkj', z[:, 0], z[:, 1])  # bins of one region against the same region's bins
        assert sim.min() > 0.9  # so as negatives they would be near-copies of the positive
        masked, _ = model(x, spans)
        model.mask_region_bins = False
        unmasked, _ = model(x, spans)
    # at initialisation every vector looks alike, so each loss is about log(candidates): 1 + 8 masked, 1 + 11 unmasked
    assert masked.item() == pytest.approx(math.log(9), abs=0.05) and unmasked.item() == pytest.approx(math.log(12), abs=0.05)
    ids = torch.tensor([5, 5, 7])  # sources 0 and 1 are the same video: all their bins are masked from each other
    model.mask_region_bins = True
    z1, z2 = z[:, 0].reshape(12, -1), z[:, 1].reshape(12, -1)
    want, _ = symmetric_info_nce(z1, z2, ids=ids.repeat_interleave(4))
    assert model(x, spans, ids)[0].item() == pytest.approx(want.item(), abs=1e-5)


def test_pal_background_negatives_raise_the_loss_and_moco_fills_its_queue():
    torch.manual_seed(0)
    x, spans = small_batch()
    plain = PAL(Encoder('tiny', clip_len=4, width=4), dim=8).eval()
    with_bg = PAL(Encoder('tiny', clip_len=4, width=4), dim=8, background_negatives=True, bg_gap=0.5).eval()
    with_bg.load_state_dict(plain.state_dict())
    assert with_bg(x, spans)[0] > plain(x, spans)[0]
    # at the measured gap (1.75 clips) no piece of these 4-clip videos is far enough from its paste: nothing changes
    far = PAL(Encoder('tiny', clip_len=4, width=4), dim=8, background_negatives=True).eval()
    far.load_state_dict(plain.state_dict())
    assert far(x, spans)[0].item() == pytest.approx(plain(x, spans)[0].item(), abs=1e-6)
    x, spans = small_batch(B=4)  # shuffle-BN: 2 BatchNorm groups of 2 samples
    moco = PAL(Encoder('tiny', clip_len=4, width=4), dim=8, moco=True, queue_size=10)
    moco(x, spans)
    assert moco.moco.filled.item() == 8  # both views' keys of 4 samples
    moco.eval(); moco(x, spans)
    assert moco.moco.filled.item() == 8  # eval mode leaves the queue alone
    assert 'moco.queue' in moco.state_dict() and 'moco.key_encoder.stem.0.weight' in moco.state_dict()
    moco.train()
    with pytest.raises(ValueError, match='at least 4 samples'): moco(*small_batch(B=3))
    PAL(Encoder('tiny', clip_len=4, width=4), dim=8, moco=True, shuffle_bn=False)(*small_batch(B=3))  # without shuffle-BN, any batch


def _bn_groups_seen(model, x, spans, ids=None, ref=None, loss=False):
    "The samples (rows of `ref`, default `x`) normalised together in each forward of the online and of the key encoder."
    rows = (x if ref is None else ref).flatten(0, 1)  # [2B, ...]: sample b's views are rows 2b, 2b + 1
    seen = {'query': [], 'key': []}
    def record(kind):
        def hook(module, args):
            got = {int(torch.nonzero((rows == r).flatten(1).all(1))[0]) // 2 for r in args[0]}
            seen[kind].append(frozenset(got))
        return hook
    model.encoder.register_forward_pre_hook(record('query'))
    if model.moco is not None: model.moco.key_encoder.register_forward_pre_hook(record('key'))
    out = model(x, spans, ids)[0]
    return (seen, out) if loss else seen


def test_shuffle_bn_normalises_keys_with_other_samples_than_their_queries():
    "MoCo in one process: queries in contiguous BatchNorm groups, keys in interleaved ones; the plain objective stays one group."
    torch.manual_seed(0)
    x, spans = small_batch(B=6)
    moco = PAL(Encoder('tiny', clip_len=4, width=4), dim=8, moco=True, queue_size=16)
    seen = _bn_groups_seen(moco, x, spans)
    assert seen['query'] == [{0, 1, 2}, {3, 4, 5}] and seen['key'] == [{0, 2, 4}, {1, 3, 5}]
    group = lambda kind, i: next(g for g in seen[kind] if i in g)
    assert all(group('query', i) != group('key', i) for i in range(6))
    # without shuffle-BN (and without MoCo) one forward normalises the whole batch together, as before
    off = _bn_groups_seen(PAL(Encoder('tiny', clip_len=4, width=4), dim=8, moco=True, queue_size=16, shuffle_bn=False), x, spans)
    assert off == {'query': [set(range(6))], 'key': [set(range(6))]}
    assert _bn_groups_seen(PAL(Encoder('tiny', clip_len=4, width=4), dim=8), x, spans)['query'] == [set(range(6))]
    # the groups change the batch statistics, so the keys differ from one-group keys (and eval mode ignores the groups)
    q, k = shuffle_groups(6, 3)
    assert [g.tolist() for g in q] == [[0, 1], [2, 3], [4, 5]] and [g.tolist() for g in k] == [[0, 3], [1, 4], [2, 5]]
    ev = PAL(Encoder('tiny', clip_len=4, width=4), dim=8, moco=True, queue_size=16).eval()
    assert len(_bn_groups_seen(ev, x, spans)['key']) == 1


def test_embed_in_groups_normalises_each_group_and_restores_batch_order():
    "Keys in the interleaved groups of shuffle_bn_plan: each group normalised on its own, outputs back in batch order."
    bn = torch.nn.BatchNorm1d(1, affine=False)  # training mode: batch statistics
    x = torch.tensor([[0.], [10.], [1.], [11.], [2.], [12.]])
    embed = lambda x, spans, enc, head: (enc(x), None if spans is None else 2 * spans, None)
    q_groups, k_groups = shuffle_bn_plan(6, 2, on=True)
    assert [g.tolist() for g in q_groups] == [[0, 1, 2], [3, 4, 5]] and [g.tolist() for g in k_groups] == [[0, 2, 4], [1, 3, 5]]
    out, sp, none = embed_in_groups(embed, x, torch.arange(6.), bn, None, k_groups)
    z = 1.5 ** 0.5  # (0, 1, 2) and (10, 11, 12) normalise alike: -z, 0, z
    assert torch.allclose(out.flatten(), torch.tensor([-z, -z, 0, 0, z, z]), atol=1e-3)
    assert sp.tolist() == [0, 2, 4, 6, 8, 10] and none is None  # other outputs follow the samples back to batch order
    qo = embed_in_groups(embed, x, None, bn, None, q_groups)[0].flatten()  # contiguous groups (0, 10, 1), (11, 2, 12): other statistics
    assert not torch.allclose(qo, out.flatten(), atol=1e-2)
    assert torch.allclose(embed_in_groups(embed, x, None, bn, None, None)[0], bn(x))  # no groups: one batch
    assert shuffle_bn_plan(6, 2, on=False) == (None, None)
    with pytest.raises(ValueError, match='at least 6 samples'): shuffle_bn_plan(5, 3, on=True)
    with pytest.raises(ValueError, match="'ranks'"): embed_in_groups(embed, x, None, bn, None, 'rank')


def test_names_moved_to_the_appendix_modules_are_the_same_objects():
    "MoCo and the multi-process helpers live in pal.moco, the receptive-field probes in pal.receptive; pal.loss re-exports them."
    import pal.loss, pal.moco, pal.receptive
    for n in ('MoCo', 'gather_features', 'rank_offset', 'shuffle_groups', '_distributed', '_all_gather', '_GatherWithGrad'):
        assert getattr(pal.loss, n) is getattr(pal.moco, n), n
    for n in ('frame_weights', 'background_gap', '_linearised'): assert getattr(pal.loss, n) is getattr(pal.receptive, n), n
    assert {'MoCo', 'gather_features', 'rank_offset', 'shuffle_groups', 'frame_weights', 'background_gap'} <= set(pal.loss.__all__)


DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('objective', ['pal', 'video'])
def test_losses_run_in_float32_and_under_bf16_autocast(objective, autocast, device):
    """The objective keeps its logits and loss in float32 under bf16 autocast, and its gradients finite.

    bf16 autocast is a CUDA path (`TrainConfig.amp`); training on the CPU runs float32. On the CPU this test therefore checks
    only the objective's own dtype handling, with oneDNN off: torch 2.14.1's oneDNN bf16 convolution backward gave
    non-finite gradients at random (10 of 200 identical repeats on an AMD EPYC; 0 of 200 with PyTorch's own kernels)."""
    torch.manual_seed(0)
    x, spans = small_batch(B=3, T=8, size=16)
    x, spans = x.to(device), spans.to(device)
    make = lambda: (PAL(Encoder('tiny', clip_len=4, width=4), dim=8, background_negatives=True, bg_gap=0.25) if objective == 'pal'
                    else VideoContrast(Encoder('tiny', clip_len=4, width=4), dim=8))
    model = make().to(device)
    ref, _ = model(x, spans)  # float32
    with torch.backends.mkldnn.flags(enabled=device != 'cpu' or not autocast), \
         torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        loss, stats = model(x, spans)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert abs(loss.item() - ref.item()) < (0.1 if autocast else 1e-5)
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(0 <= v.item() <= 1 for n, v in stats.items() if n == 'top1')


def test_video_contrast_pools_globally_and_ignores_spans():
    torch.manual_seed(0)
    x, spans = small_batch()
    model = VideoContrast(Encoder('tiny', clip_len=4, width=4), dim=8).eval()
    loss, _ = model(x)
    with torch.no_grad():
        z = model.head(model.encoder(x.flatten(0, 1)).mean(-1)).view(3, 2, -1)
    assert loss.item() == pytest.approx(symmetric_info_nce(z[:, 0], z[:, 1])[0].item(), abs=1e-5)
    assert model(x, spans)[0].item() == pytest.approx(loss.item(), abs=1e-6)
    with pytest.raises(ValueError, match=r'\[B, 2, 3, T, H, W\]'): model(x[:, 0])


def test_a_few_steps_on_sample_videos_raise_retrieval_accuracy():
    from pal.video import VideoReader, list_videos
    from pal.samples import sample_dir
    from pal.sampling import stack_spans
    from pal.paste import synth_batch, augment, AugmentConfig
    readers = [VideoReader(p, size=(48, 64)) for p in list_videos(sample_dir())]
    videos, plans = synth_batch(readers, seed=0)
    x, spans = augment(videos, AugmentConfig(size=(24, 24)), generator=0), stack_spans(plans)  # 7 samples
    torch.manual_seed(0)
    model = PAL(Encoder('tiny', width=8))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad(): loss0, s0 = model(x, spans)
    for _ in range(6):
        loss, _ = model(x, spans)
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad(): loss1, s1 = model(x, spans)
    assert s0['top1'] < 0.9 and s1['top1'] > s0['top1'] + 0.2
    assert loss1 < loss0 and s1['pos_sim'] - s1['neg_sim'] > s0['pos_sim'] - s0['neg_sim']


def _ddp_worker(rank, world, init_file, q, k, out):
    "One rank of a 2-process gloo group: InfoNCE on its half of the batch with keys gathered from both."
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    m = len(q) // world
    ql, kl = q[rank * m:(rank + 1) * m].clone(), k[rank * m:(rank + 1) * m].clone().requires_grad_()
    gathered = gather_features(kl)
    loss, _ = info_nce(ql, kl)
    loss.backward()
    torch.save(dict(gathered=gathered.detach(), loss=loss.detach(), grad=kl.grad, offset=rank_offset(m)), f'{out}.{rank}')
    dist.destroy_process_group()


def test_gather_features_across_two_processes(tmp_path):
    import torch.multiprocessing as mp
    q, k = unit(6, 8, seed=9), unit(6, 8, seed=10)
    # fork: the children inherit the imported modules, so the test takes a second instead of two imports of torch
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / 'init'), q, k, str(tmp_path / 'out')), nprocs=2, start_method='fork')
    r = [torch.load(tmp_path / f'out.{i}') for i in range(2)]
    assert all(torch.allclose(ri['gathered'], k) for ri in r)  # rank order
    assert [ri['offset'] for ri in r] == [0, 3]
    # the mean of the two local losses is the single-process loss of the whole batch
    assert ((r[0]['loss'] + r[1]['loss']) / 2).item() == pytest.approx(info_nce(q, k)[0].item(), abs=1e-5)
    # each rank's keys get the gradient of both ranks' losses (they are negatives for the other rank's queries):
    # averaged over the ranks, as DDP averages, it is the single-process gradient of the whole batch
    kk = k.clone().requires_grad_()
    info_nce(q, kk)[0].backward()
    assert torch.allclose(torch.cat([r[0]['grad'], r[1]['grad']]) / 2, kk.grad, atol=1e-5)
    # and not just the local part: rank 0's own loss alone gives a different gradient for its keys
    kl = k.clone().requires_grad_()
    F.cross_entropy(q[:3] @ kl.T / 0.1, torch.arange(3)).backward()
    assert not torch.allclose(r[0]['grad'], kl.grad[:3], atol=1e-3)


def _shuffle_worker(rank, world, init_file, x, spans, ids, out):
    "One rank of a 2-process gloo group: a MoCo PAL step on its half of the batch, keys computed with shuffle-BN."
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    torch.manual_seed(0)
    model = PAL(Encoder('tiny', clip_len=4, width=4), dim=8, moco=True, queue_size=16, background_negatives=True, bg_gap=0.25)
    m = len(x) // world
    part = slice(rank * m, (rank + 1) * m)
    seen, loss = _bn_groups_seen(model, x[part], spans[part], ids[part], ref=x, loss=True)
    torch.save(dict(loss=loss.detach(), seen={k: [sorted(g) for g in v] for k, v in seen.items()}), f'{out}.{rank}')
    dist.destroy_process_group()


def test_shuffle_bn_across_two_processes(tmp_path):
    "Under torchrun each process normalises its own queries and the keys of every other sample: the same as one process with 2 groups."
    import torch.multiprocessing as mp
    x, spans = small_batch(B=4)
    ids = torch.arange(4)
    mp.start_processes(_shuffle_worker, args=(2, str(tmp_path / 'init'), x, spans, ids, str(tmp_path / 'out')), nprocs=2, start_method='fork')
    r = [torch.load(tmp_path / f'out.{i}') for i in range(2)]
    # rank 0 holds samples 0, 1 and computes the keys of 0, 2; rank 1 holds 2, 3 and computes the keys of 1, 3
    assert [ri['seen']['query'] for ri in r] == [[[0, 1]], [[2, 3]]]
    assert [ri['seen']['key'] for ri in r] == [[[0, 2]], [[1, 3]]]
    torch.manual_seed(0)
    one = PAL(Encoder('tiny', clip_len=4, width=4), dim=8, moco=True, queue_size=16, background_negatives=True, bg_gap=0.25)
    want, _ = one(x, spans, ids)  # one process, bn_groups=2: queries {0, 1}, {2, 3}; keys {0, 2}, {1, 3}
    assert ((r[0]['loss'] + r[1]['loss']) / 2).item() == pytest.approx(want.item(), abs=1e-5)
