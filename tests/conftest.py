"Shared pytest fixtures."
import pytest, torch


@pytest.fixture(scope='module')
def one_thread():
    "Small tensors: one torch thread is faster than two competing ones on a shared CPU (restored afterwards)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
