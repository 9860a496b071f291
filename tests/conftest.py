"Shared pytest fixtures."
import pytest, torch


@pytest.fixture(scope='session', autouse=True)
def _private_frame_table_cache(tmp_path_factory):
    "Frame tables go to a fresh cache folder for the test session, not the user's ~/.cache/pal (restored afterwards)."
    mp = pytest.MonkeyPatch()
    mp.setenv('PAL_CACHE_DIR', str(tmp_path_factory.mktemp('pal_cache')))
    yield
    mp.undo()


@pytest.fixture(scope='module')
def one_thread():
    "Small tensors: one torch thread is faster than two competing ones on a shared CPU (restored afterwards)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
