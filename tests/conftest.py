import matplotlib
import pytest
import torch

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _fresh_pyro_store():
    """Each test starts with an empty Pyro param store and leaves none behind."""
    import pyro

    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # The models under test are small: one intra-op thread is as fast as two on an idle machine
    # and far faster when the cores are shared with other jobs.
    torch.set_num_threads(1)
