"pal.train under torchrun: a 2-process pal-pretrain run on the CPU (gloo). The gathering itself is tested in test_loss.py."
import os, subprocess, sys
from pathlib import Path

import pytest

from pal.samples import sample_dir
from pal.train import load_checkpoint, read_log


@pytest.mark.parametrize('moco', [False, True])
def test_torchrun_two_processes(tmp_path, moco):
    "pal-pretrain under torchrun --nproc_per_node 2 (gloo): one run folder, written once, with the right steps; MoCo with shuffle-BN across the processes."
    out = tmp_path / 'run'
    script = Path(sys.executable).parent / 'pal-pretrain'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script),
           '--videos', str(sample_dir()), '--out', str(out), '--device', 'cpu', '--steps', '2', '--batch-size', '4',
           '--size', '32', '--n-clips', '4', '--clip-len', '4', '--workers', '0'] + (['--moco', '--queue-size', '16'] if moco else [])
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('videos usable') == 1  # only process 0 talks and writes
    # gloo has no SyncBatchNorm: the run says how BatchNorm statistics are shared
    assert ('shuffle-BN across the 2 processes' if moco else 'BatchNorm statistics per process (SyncBatchNorm needs CUDA)') in r.stdout
    rows = read_log(out / 'log.csv')
    assert [row['step'] for row in rows] == [1, 2]
    assert all(0 < row['loss'] < 10 for row in rows)
    ck = load_checkpoint(out / 'checkpoint.pt')
    assert ck['step'] == 2 and ck['world_size'] == 2
    assert not any(k.startswith('module.') for k in ck['encoder'])  # saved unwrapped, loadable without DDP
    if moco: assert ck['moco']['filled'] == 16  # 2 steps x 4 sources x 2 views, gathered from both processes
