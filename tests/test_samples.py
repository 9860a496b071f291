"Tests for pal.samples: the committed sample set matches its manifest, generation is deterministic, the index code is robust."
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from pal.samples import (sample_dir, make_samples, samples_cli, write_video, draw_index_code, read_index_code,
                         render_scene, SAMPLES)

DIR = sample_dir()
MANIFEST = json.loads((DIR / 'manifest.json').read_text())
VIDEOS = MANIFEST['videos']


def decode(path):
    "Frames (sequential PyAV decode), fps and codec of a file."
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format='rgb24') for f in c.decode(s)])
        return frames, float(s.guessed_rate), s.codec_context.name, c.format.name


@pytest.mark.parametrize('entry', VIDEOS, ids=[e['file'] for e in VIDEOS])
def test_manifest_matches_decoded_file(entry):
    frames, fps, codec, fmt = decode(DIR / entry['file'])
    assert frames.shape == (entry['frames'], entry['height'], entry['width'], 3)
    assert fps == entry['fps'] and entry['duration'] == pytest.approx(entry['frames'] / entry['fps'])
    assert codec == entry['codec']
    assert [read_index_code(f) for f in frames] == list(range(entry['frames']))  # frame k shows k
    assert 2 <= entry['duration'] <= 8


def test_sample_set_covers_the_brief():
    files = sorted(p.name for p in DIR.iterdir() if p.name != 'manifest.json')
    assert files == sorted(e['file'] for e in VIDEOS) and len(files) >= 6
    assert sum(p.stat().st_size for p in DIR.iterdir()) <= 3_000_000
    assert {'mp4', 'avi'} <= {e['container'] for e in VIDEOS}
    assert len({e['fps'] for e in VIDEOS}) >= 3 and {12, 24, 30} <= {e['fps'] for e in VIDEOS}
    assert any(e['height'] % 2 and e['width'] % 2 for e in VIDEOS)  # an odd size
    assert any(e['height'] == e['width'] for e in VIDEOS) and any(e['height'] != e['width'] for e in VIDEOS)
    assert all(48 <= e['height'] <= 96 and 64 <= e['width'] <= 128 for e in VIDEOS)
    assert sum(e['damaged'] for e in VIDEOS) == 1


def test_damaged_sample_has_pts_equal_dts_and_b_frames():
    e = next(e for e in VIDEOS if e['damaged'])
    with av.open(str(DIR / e['file'])) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
        assert all(p.pts == p.dts for p in packets)
    with av.open(str(DIR / e['file'])) as c:
        kinds = {f.pict_type for f in c.decode(video=0)}
    assert av.video.frame.PictureType.B in kinds


def test_samples_are_visibly_distinct_and_moving():
    "Backgrounds move (consecutive frames differ) and videos differ from each other (mean colour)."
    means = []
    for e in VIDEOS:
        frames, *_ = decode(DIR / e['file'])
        body = frames[:, 12:].astype(np.float32)  # below the index code
        assert np.abs(np.diff(body, axis=0)).mean() > 3  # motion everywhere, not a still
        means.append(body.mean((0, 1, 2)))
    means = np.stack(means)
    d = np.abs(means[:, None] - means[None]).sum(-1) + np.eye(len(means)) * 1e3
    assert d.min() > 10  # every pair of videos differs in average colour


def test_generation_is_deterministic_and_matches_committed(tmp_path):
    "Two fresh runs give the same bytes; the committed set is what the generator writes (same FFmpeg build)."
    a, b = tmp_path / 'a', tmp_path / 'b'
    make_samples(a)
    samples_cli(['--out', str(b)])
    for e in VIDEOS:
        assert (a / e['file']).read_bytes() == (b / e['file']).read_bytes(), e['file']
    assert json.loads((a / 'manifest.json').read_text()) == MANIFEST
    for e in VIDEOS:  # same pictures as the committed files (bytes and rounding may differ under another FFmpeg)
        new, old = decode(a / e['file'])[0].astype(np.float32), decode(DIR / e['file'])[0]
        assert new.shape == old.shape and np.abs(new - old).mean() < 2, e['file']


def test_other_seed_gives_other_content(tmp_path):
    f0 = render_scene(4, 48, 64, texture='noise', seed=0)
    f1 = render_scene(4, 48, 64, texture='noise', seed=1)
    assert np.abs(f0.astype(int) - f1).mean() > 10
    assert np.array_equal(f0, render_scene(4, 48, 64, texture='noise', seed=0))


@pytest.mark.parametrize('name,codec,kw', [('x.mp4', 'libx264', dict(crf=18)), ('x.avi', 'mjpeg', dict(q=2)),
                                           ('x.mov', 'mpeg4', dict(bit_rate=800_000)), ('x.webm', 'libvpx-vp9', dict(crf=20, bit_rate=0))])
def test_write_video_roundtrip(tmp_path, name, codec, kw):
    frames = torch.from_numpy(render_scene(10, 48, 64, texture='checker', seed=3))  # a tensor works too
    p = write_video(tmp_path / name, frames, 10, codec, **kw)
    got, fps, *_ = decode(p)
    assert got.shape == (10, 48, 64, 3) and fps == 10
    assert [read_index_code(f) for f in got] == list(range(10))
    err = np.abs(got.astype(int) - frames.numpy()).mean()
    assert err < 12  # lossy, but the same pictures ...
    assert np.abs(got[1:].astype(int) - frames.numpy()[:-1]).mean() > err + 5  # ... and not their neighbours


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match='uint8'):
        write_video(tmp_path / 'f.mp4', np.zeros((3, 48, 64, 3), np.float32), 10)
    with pytest.raises(ValueError, match='f.mp4'):
        write_video(tmp_path / 'f.mp4', np.zeros((3, 48, 64), np.uint8), 10)
    with pytest.raises(ValueError, match='T > 0'):
        write_video(tmp_path / 'f.mp4', np.zeros((0, 48, 64, 3), np.uint8), 10)


def test_index_code_roundtrip_and_damage_detection():
    f = np.full((48, 64, 3), 128, np.uint8)
    for k in range(256):
        assert read_index_code(draw_index_code(f, k)) == k
    t = torch.zeros(48, 64, 3, dtype=torch.uint8)
    assert read_index_code(draw_index_code(t, 77)) == 77  # torch tensors too
    with pytest.raises(ValueError, match='unreadable'):
        read_index_code(np.full((48, 64, 3), 128, np.uint8))  # no code: refuses to guess
    with pytest.raises(ValueError):
        draw_index_code(f, 256)
    with pytest.raises(ValueError, match='too small'):
        draw_index_code(np.zeros((6, 64, 3), np.uint8), 1)


def test_index_code_survives_resize_and_brightness():
    f = render_scene(1, 61, 97, seed=0)[0]
    draw_index_code(f, 201)
    x = torch.from_numpy(f).permute(2, 0, 1)[None].float()
    for size in [(40, 50), (112, 112), (200, 300)]:
        y = torch.nn.functional.interpolate(x, size=size, mode='bilinear', antialias=True)[0].permute(1, 2, 0)
        assert read_index_code(y.round().byte(), src_hw=(61, 97)) == 201
    dim = (f.astype(np.float32) * .5 + 40).astype(np.uint8)
    assert read_index_code(dim, margin=30) == 201


def test_recipes_match_manifest():
    assert [r[0] for r in SAMPLES] == [e['file'] for e in VIDEOS]
