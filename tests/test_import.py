import subprocess
import sys


def test_import_leaves_global_state_alone():
    code = """
import warnings, torch, pyro
filters = list(warnings.filters)
dtype = torch.get_default_dtype()
store = dict(pyro.get_param_store().items())
rng = torch.random.get_rng_state()
import bayesresnet
assert torch.get_default_dtype() == dtype, torch.get_default_dtype()
assert dict(pyro.get_param_store().items()) == store
assert list(warnings.filters) == filters
assert torch.equal(torch.random.get_rng_state(), rng)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
