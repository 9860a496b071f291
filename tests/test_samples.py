"Tests for pal.samples: the committed sample set matches its manifest, generation is deterministic, the index code is robust."
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from pal.samples import (sample_dir, make_samples, samples_cli, write_video, draw_index_code, read_index_code,
                         render_scene, SAMPLES, make_hard_cases, cut_mid_packet, write_packed_bframes_avi, write_edit_list_mp4)

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
    "Two fresh runs give the same pictures; the committed set is what the generator draws. Decoded frames are compared, never encoder bytes (they differ across CPUs)."
    a, b = tmp_path / 'a', tmp_path / 'b'
    make_samples(a)
    samples_cli(['--out', str(b)])
    assert json.loads((a / 'manifest.json').read_text()) == MANIFEST
    for e in VIDEOS:
        new, again, old = (decode(d / e['file'])[0] for d in (a, b, DIR))
        assert new.shape == again.shape == old.shape, e['file']
        assert [read_index_code(f) for f in new] == list(range(e['frames'])), e['file']
        for x in (again, old):  # the same pictures (x264 4:4:4 differs run to run on some CPUs), not their neighbours
            err = np.abs(new.astype(np.float32) - x).mean()
            assert err < 4 and np.abs(new[1:].astype(np.float32) - x[:-1]).mean() > 2 * err + 2, (e['file'], err)


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


# -- the real-world traps ----------------------------------------------------------------------

def shown_codes(path, rotation=0):
    "Index codes of the frames decoded from the whole packets of `path`, turned as a player shows them."
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        packets = [q for q in c.demux(s) if q.size and not q.is_corrupt]
        frames = [f for q in packets for f in s.decode(q)] + s.decode(None)
        return [read_index_code(np.rot90(f.to_ndarray(format='rgb24'), rotation // 90)) for f in frames], s.time_base, [f.pts for f in frames]


def test_hard_cases_hold_what_they_promise(tmp_path):
    cases = make_hard_cases(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(e['file'] for e in cases)
    for e in cases:
        p = tmp_path / e['file']
        if not e['usable']:
            with pytest.raises(av.FFmpegError): av.open(str(p))
            continue
        codes, tb, pts = shown_codes(p, e['rotation'])
        assert codes == list(range(e['frames'])), e['file']  # frame k of a decode shows k
        if e['seek']:  # clean labels: their times are the promised ones
            assert np.allclose([float((q - pts[0]) * tb) for q in pts], e['times'], atol=1e-3), e['file']


def test_packed_bframes_avi_is_packed(tmp_path):
    p = write_packed_bframes_avi(tmp_path / 'p.avi', render_scene(30, 48, 64, seed=1), 25)
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        assert s.codec_tag == 'XVID' and b'DivX503b1393p' in s.codec_context.extradata
        sizes = [q.size for q in c.demux(s) if q.size]
    codes, _, labels = shown_codes(p)
    assert len(sizes) == 30 and sum(n <= 8 for n in sizes) >= 8  # one chunk per frame, the placeholders tiny
    assert codes == list(range(30)) and labels != sorted(labels)  # shown in order, labelled out of order


def test_edit_list_hides_the_lead_in(tmp_path):
    frames = render_scene(30, 48, 64, seed=1)
    p = write_edit_list_mp4(tmp_path / 'e.mp4', frames, 25, lead=7)
    with av.open(str(p)) as c:
        flags = [q.is_discard for q in c.demux(video=0) if q.size]
    codes, _, _ = shown_codes(p)
    assert (len(flags), sum(flags)) == (30, 7) and codes == list(range(7, 30))


def test_times_and_rotation_are_written(tmp_path):
    t = np.array([0, .1, .35, .4, 1.0])
    p = write_video(tmp_path / 't.mp4', render_scene(5, 48, 64), 10, times=t, rotation=90, crf=18)
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        fr = list(c.decode(s))
    assert np.allclose([float((f.pts - fr[0].pts) * s.time_base) for f in fr], t, atol=1e-4) and fr[0].rotation == 90
    with pytest.raises(ValueError, match='multiples of 1/10'):
        write_video(tmp_path / 't.avi', render_scene(5, 48, 64), 10, 'mpeg4', times=t + .01)
    with pytest.raises(ValueError, match='increasing'):
        write_video(tmp_path / 'u.mp4', render_scene(5, 48, 64), 10, times=t[::-1])


def test_cut_mid_packet_keeps_the_first_frames(tmp_path):
    src = write_video(tmp_path / 'v.mp4', render_scene(48, 48, 64, seed=2), 24, crf=18, bf=3, g=12,
                      container_options={'movflags': 'faststart'})
    dst, n = cut_mid_packet(src, tmp_path / 'c.mp4', .6)
    assert 0 < dst.stat().st_size < src.stat().st_size and 20 < n < 40
    assert shown_codes(dst)[0] == list(range(n))  # the whole packets hold exactly the first n frames
