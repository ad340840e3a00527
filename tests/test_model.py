import pyro
import pyro.poutine as poutine
import pytest
import torch

import bayesresnet as brn
from bayesresnet import likelihoods, priors

OPTIONS = [
    (priors.Normal(1.0), likelihoods.Gaussian()),
    (priors.Normal(0.7, site_scales={"W_coef": 0.3}), likelihoods.Gaussian(noise=0.2)),
    (priors.Hierarchical(2.0), likelihoods.Gaussian()),
    (priors.Normal(1.0), likelihoods.Gaussian(heteroscedastic=True)),
    (priors.Hierarchical(1.0), likelihoods.Gaussian(noise=[0.1, 0.3])),
]


def _model(prior, likelihood, out_dim=2):
    net = brn.ResNet(3, out_dim, width=4, depth=3, basis=brn.Linear())
    return brn.BayesianResNet(net, prior=prior, likelihood=likelihood)


def _data(n=6, out_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, generator=g, dtype=torch.float64),
            torch.randn(n, out_dim, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("prior, likelihood", OPTIONS)
def test_pyro_trace_log_density_equals_log_joint(prior, likelihood):
    model = _model(prior, likelihood)
    x, y = _data()
    values = model.sample_prior(3)
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(x, y)
    sampled = {name for name, node in trace.nodes.items()
               if node["type"] == "sample" and name not in ("obs", "data")}
    assert sampled == set(model.latent_sites)
    assert torch.allclose(trace.log_prob_sum(), model.log_joint(values, x, y), atol=1e-10)
    trace.compute_log_prob()
    pointwise = model.log_likelihood(values, x, y)
    assert pointwise.shape == (6,)
    assert torch.allclose(trace.nodes["obs"]["log_prob"], pointwise, atol=1e-12)
    assert torch.allclose(trace.nodes["obs"]["log_prob_sum"], pointwise.sum(), atol=1e-10)


@pytest.mark.parametrize("prior, likelihood", OPTIONS)
def test_batched_densities_equal_a_loop(prior, likelihood):
    model = _model(prior, likelihood)
    x, y = _data()
    values = model.sample_prior(5, (3, 5))
    joint = model.log_joint(values, x, y)
    pointwise = model.log_likelihood(values, x, y)
    assert joint.shape == (3, 5) and pointwise.shape == (3, 5, 6)
    for i in range(3):
        for j in range(5):
            single = {k: v[i, j] for k, v in values.items()}
            assert torch.allclose(joint[i, j], model.log_joint(single, x, y), atol=1e-10)
            assert torch.allclose(pointwise[i, j], model.log_likelihood(single, x, y))


@pytest.mark.parametrize("prior, likelihood", OPTIONS)
def test_flat_view_round_trip_and_jacobian(prior, likelihood):
    model = _model(prior, likelihood)
    x, y = _data()
    values = model.sample_prior(7, (4,))
    z = model.unconstrain(values)
    assert z.shape == (4, model.dim)
    back, log_det = model.constrain(z)
    for name in values:
        assert torch.allclose(back[name], values[name], rtol=1e-12, atol=1e-12)
    # Independent Jacobian: autograd determinant of the full flat map for one draw.
    z0 = z[0].clone()

    def flat_constrained(u):
        vals, _ = model.constrain(u)
        return torch.cat([vals[k].reshape(-1) for k in model.latent_sites])

    jac = torch.autograd.functional.jacobian(flat_constrained, z0)
    assert torch.allclose(log_det[0], torch.linalg.slogdet(jac)[1], atol=1e-10)
    density = model.log_density(z, x, y)
    assert torch.allclose(density, model.log_joint(back, x, y) + log_det)


def test_heteroscedastic_doubles_the_output_layer():
    model = _model(priors.Normal(1.0), likelihoods.Gaussian(heteroscedastic=True), out_dim=2)
    assert model.net.out_dim == 4 and model.out_dim == 2 and model.user_net.out_dim == 2
    assert "noise" not in model.latent_sites
    x, _ = _data()
    loc, scale = model.loc_scale(model.sample_prior(0), x)
    assert loc.shape == scale.shape == (6, 2) and (scale > 0).all()


def test_pyro_model_runs_under_predictive_and_plates():
    model = _model(priors.Normal(1.0), likelihoods.Gaussian())
    x, _ = _data()
    samples = pyro.infer.Predictive(model, num_samples=7)(x)
    assert samples["obs"].shape == (7, 6, 2)
    assert samples["W_coef"].shape[0] == 7 and samples["W_coef"].shape[-3:] == (2, 4, 4)


def test_config_round_trip():
    model = _model(priors.Hierarchical(2.0), likelihoods.Gaussian(noise=[0.1, 0.3]))
    again = brn.BayesianResNet.from_config(model.config())
    assert again.config() == model.config()
    assert list(again.latent_shapes.items()) == list(model.latent_shapes.items())


def test_sample_prior_is_seeded_and_leaves_global_rng_alone():
    model = _model(priors.Normal(1.0), likelihoods.Gaussian())
    state = torch.random.get_rng_state()
    a, b = model.sample_prior(11, (2,)), model.sample_prior(11, (2,))
    c = model.sample_prior(12, (2,))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["W_coef"], c["W_coef"])


def test_bad_inputs():
    net = brn.ResNet(3, 2, width=4, depth=3)
    with pytest.raises(ValueError, match="prior"):
        brn.BayesianResNet(net, prior="normal")
    with pytest.raises(ValueError, match="site_scales"):
        brn.BayesianResNet(net, prior=priors.Normal(1.0, site_scales={"nope": 1.0}))
    with pytest.raises(ValueError, match="scale"):
        priors.Normal(-1.0)
    with pytest.raises(ValueError, match="noise"):
        likelihoods.Gaussian(noise=0.0)
    with pytest.raises(ValueError, match="heteroscedastic"):
        likelihoods.Gaussian(noise=0.1, heteroscedastic=True)
    model = brn.BayesianResNet(net)
    x, y = _data()
    with pytest.raises(ValueError, match="shape"):
        model.log_joint(model.sample_prior(0), x, y[:, :1])
    with pytest.raises(ValueError, match="last dimension"):
        model.constrain(torch.zeros(model.dim + 1, dtype=torch.float64))


@pytest.mark.parametrize("prior, likelihood", OPTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_density_equals_pyro_trace_plus_jacobian(prior, likelihood, dtype):
    # log_density scores the Normal-prior sites in one pass over the flat vector; it must equal
    # Pyro's own scoring of the model at the constrained values plus the log-Jacobian, for
    # contiguous (Normal) and interleaved (Hierarchical: scale, raw, scale, ...) site layouts.
    model = _model(prior, likelihood)
    x, y = _data()
    z = torch.randn(5, model.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    values, log_det = model.constrain(z)
    expected = torch.stack([
        poutine.trace(poutine.condition(model, data={k: v[i] for k, v in values.items()}))
        .get_trace(x, y).log_prob_sum() for i in range(5)]) + log_det
    density = model.log_density(z.to(dtype), x.to(dtype), y.to(dtype))
    assert density.shape == (5,)
    rtol = 1e-12 if dtype == torch.float64 else 1e-4  # float32: about 1e-7 per rounding
    assert torch.allclose(density.double(), expected, atol=1e-9, rtol=rtol)


def test_normal_block_with_shifted_means_and_gaps():
    # The flat-vector prior block on its own: a non-zero mean, per-element scales, a scalar
    # site, and a non-Normal site between Normal ones (so the block's coordinates have a gap).
    from collections import OrderedDict

    import pyro.distributions as pdist

    from bayesresnet.model import _NormalBlock
    from bayesresnet.priors import LatentSite

    loc = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]], dtype=torch.float64)
    scale = torch.tensor([[1.0, 0.5, 2.0], [0.1, 3.0, 1.5]], dtype=torch.float64)
    sites = OrderedDict(
        a=LatentSite("a", (2, 3), pdist.Normal(loc, scale).to_event(2)),
        s=LatentSite("s", (), pdist.HalfNormal(torch.tensor(1.0, dtype=torch.float64))),
        b=LatentSite("b", (), pdist.Normal(torch.tensor(0.7, dtype=torch.float64),
                                           torch.tensor(0.2, dtype=torch.float64))))
    offsets = {"a": (0, 6), "s": (6, 7), "b": (7, 8)}
    block = _NormalBlock.of(sites, offsets)
    assert block.other_sites == ["s"]
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = (sites["a"].prior.log_prob(z[:, :6].reshape(4, 2, 3))
                + sites["b"].prior.log_prob(z[:, 7]))
    torch.testing.assert_close(block.log_prob(z), expected, rtol=1e-12, atol=1e-12)
