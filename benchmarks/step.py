"""3. Step: a PAL training step vs a video-level step (same backbone, same frames per batch) and vs the
bare backbone forward + backward on the same tensors.

The step is what `pal.train.fit` does per batch after the data is on the device: the objective's
forward (encoder, RoIAlign over the spans, projection head, InfoNCE), the logged statistics, backward,
gradient clipping and the optimizer step. The bare backbone is `encoder.trunk` (stem + layers, spatial
mean) forward and `mean().backward()`: no head, no loss, no optimizer. Inputs are random tensors of
the training shape `[B, 2, 3, T, size, size]`, so decoding plays no part.
"""
from __future__ import annotations
import math

import torch

from common import compare, paired, paired_spread


def _model(method: str, size: int, B: int, backbone: str):
    from pal.train import TrainConfig, build_objective, make_optimizer
    cfg = TrainConfig(method=method, size=size, batch_size=B, backbone=backbone)
    torch.manual_seed(0)
    model = build_objective(cfg)
    return cfg, model, make_optimizer(model, cfg)


def measure(size: int, B: int, reps: int, backbone: str = 'tiny') -> dict:
    T = 64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 2, 3, T, size, size, generator=g)
    a = torch.rand(B, 2, generator=g) * 5
    spans = torch.stack([a, a + 1 + torch.rand(B, 2, generator=g) * 2], -1)  # [B, 2, 2] in clips
    ids = torch.arange(B)
    fns, models = {}, {}
    for method in ('pal', 'video'):
        cfg, model, opt = _model(method, size, B, backbone)
        model.train()
        def step(r, model=model, opt=opt, cfg=cfg):
            loss, stats = model(x, spans, ids)
            s = torch.stack([loss.detach(), stats['pos_sim'], stats['neg_sim'], stats['top1']]).float().tolist()
            if math.isfinite(s[0]):
                opt.zero_grad(set_to_none=True); loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
        fns[method] = step; models[method] = model
    enc = models['pal'].encoder
    def bare(r):
        enc.zero_grad(set_to_none=True)
        enc.trunk(x.flatten(0, 1)).mean().backward()
    fns['bare'] = bare
    res = compare(fns, reps)
    out = dict(size=size, B=B, T=T, backbone=backbone, **{k: v.median for k, v in res.items()},
               **{f'{k}_cpu': v.cpu_median for k, v in res.items()})
    out['pal_over_video'] = paired(res['pal'], res['video'])  # medians of the per-round ratios
    out['pal_over_bare'] = paired(res['pal'], res['bare'])
    out['pal_over_video_iqr'] = paired_spread(res['pal'], res['video'])
    out['pal_over_bare_iqr'] = paired_spread(res['pal'], res['bare'])
    out['reps'] = reps
    out['pal_over_video_cpu'] = paired(res['pal'], res['video'], cpu=True)
    out['pal_over_bare_cpu'] = paired(res['pal'], res['bare'], cpu=True)
    return out


def run(quick: bool = False, log=print) -> dict:
    out = {}
    for size, B, reps in (((32, 6, 4),) if quick else ((32, 6, 24), (112, 2, 6))):
        out[size] = measure(size, B, reps)
        log(f'  step {size}px: {out[size]}')
    return out
