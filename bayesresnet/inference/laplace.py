"""Linearized (GGN) Laplace approximation: a Gaussian over the network's weights at a MAP fit.

The method (Daxberger et al. 2021, "Laplace Redux"; Immer, Korzepa & Bauer 2021):

1. **MAP.** Each member is a MAP fit of the P network parameters from its own network
   initialization, by the ensembles' optimizer (``bayesresnet.inference.optim.adam_maximize``:
   Adam with a cosine-decayed learning rate, full batch up to 1024 points), then polished by
   full-batch L-BFGS.
2. **Curvature.** At the MAP theta* the likelihood's curvature is computed with ``torch.func``
   on the flat parameter vector: the generalized Gauss-Newton ``G = sum_i J_i^T J_i``
   (``J_i`` the Jacobian of the network output at training input i; the default), the exact
   Hessian of the squared error (``"hessian"``), its diagonal (``"diag"``) or one
   Kronecker-factored block per parameter site (``"kron"``). With a Gaussian likelihood each is
   ``C / sigma^2`` for a C that does not depend on the noise scale sigma, so the posterior
   precision is ``Lambda = C / sigma^2 + c D`` with ``D = diag(1 / s_j^2)`` the model's prior
   precision (``s_j`` the prior scale of parameter j) and c a factor on it.
3. **Hyperparameters** (``prior_scale="marglik"``, ``noise_scale="marglik"``, the defaults).
   sigma and c are fitted by the Laplace marginal likelihood (type-II maximum likelihood, no
   hyperprior), maximized over (log c, log sigma) by L-BFGS, with the curvature decomposed
   once per point theta (eigenvalues of ``D^{-1/2} C D^{-1/2}``), not once per evaluation.
   Following Immer et al.'s online marginal likelihood, the Laplace evidence at the current
   theta is maximized ``marglik_updates`` times during the Adam run (the first after a
   burn-in), so that the network is trained under the hyperparameters rather than overfitted
   first (with a weak prior and a learned noise, the MAP fits the noise of small data sets, and
   fitting the hyperparameters to such a MAP afterwards only confirms it: on UCI wine, test RMSE
   0.69 against 0.63 in original units, split 0); until the first update sigma is learned with
   the network, by its prior (a noise held at the data's scale instead kept some networks in an
   underfitted equilibrium that explains the data as noise). After Adam, ``max_rounds``
   rounds (default 1) refit them by the evidence of the network linearized at theta
   (``f(x, theta') ~ f(x, theta) + J(x) (theta' - theta)``: the Gaussian likelihood and prior
   are conjugate there and the evidence has a closed form; with the Hessian, the Laplace
   evidence of the quadratic model) and polish theta to the MAP under them; the Gaussian is at
   the polished theta with the hyperparameters it was polished under. With the Kronecker or
   diagonal curvature the evidence of the quadratic model at its mode is unbounded (its gain
   ``g^T Lambda^{-1} g / 2`` can outgrow the residual term as sigma -> 0), so theta is first
   polished under the hyperparameters it was trained under and each round takes the Laplace
   evidence at theta itself. For a model linear in its parameters this is exactly the posterior at
   MacKay's evidence optimum. The polish is a full-batch L-BFGS run to the mode: where Adam's
   point generalizes better than the mode (an early-stopped network on a noisy data set), it
   can make the predictive mean worse; on UCI wine (splits 0-4, 1000 Adam steps) it moved one
   member's test RMSE from 0.645 to 0.662 on average, by up to +0.11 on a split, so the UCI
   benchmark uses ``max_rounds=0`` (the Gaussian at Adam's point, the hyperparameters of the
   last online update).
   With ``"fixed"`` the model's prior (c = 1) is kept, and the noise is learned with the
   network, by its own prior (the MAP's noise), or is the likelihood's fixed noise.
4. **Draws.** ``num_draws`` draws ``theta_m ~ N(theta*, Lambda^{-1})`` per member.

Decisions
---------
*Noise.* The noise scale is a hyperparameter, not part of the Gaussian: the Gaussian covers
the P network parameters only, and sigma is the marginal-likelihood estimate (or the MAP
estimate with ``noise_scale="fixed"``). It is the quantity the GLM predictive and laplace-torch
take as ``sigma_noise``, it keeps the curvature linear in 1 / sigma^2, and a Gaussian in
log sigma would add little: sigma is pinned down by N residuals. The draws of the ``noise``
site are that estimate repeated. The fitted prior precision ``c D`` and noise are in
``Posterior.extra`` (standardized units).

*Predictive.* ``predictive="glm"`` (default) is the linearized network's predictive: a draw's
network output is ``f(x, theta*) + J(x) (theta_m - theta*)``, computed with one batched
``torch.func.jvp`` per chunk of draws in :meth:`Laplace.predictive_loc_scale`, which
``Posterior.predict``, the ArviZ export and the diagnostics all use. As the number of draws grows
its mean and variance tend to the closed-form GLM predictive ``N(f(x, theta*),
J(x) Lambda^{-1} J(x)^T)`` that :func:`glm_predictive` returns. ``predictive="mc"`` runs the
network at the draws instead.

*Members.* ``members > 1`` fits a mixture of Laplace approximations at distinct MAP modes, each
member its own chain in the draws (chain c = member c, so the draws are ``(members, num_draws,
*site_shape)``): the predictive is the equal-weight mixture, and chains at distinct modes are
what ``stacking`` weighs. The members of a unit of work (``members_per_unit``, default all;
:meth:`Laplace.plan`) run their Adam steps as one batched run, which on a CPU costs little more
than one member's; the curvature, evidence fits and draws are per member. On UCI wine the
mixture is what lifts Laplace above a MAP: one member's GLM predictive mean is its MAP network,
and no single network trained on it (MAP, Adam's point, polished or not) reached the published
VI-meanfield RMSE, where three members did (``benchmarks/results/laplace.md``). Each member has
its own hyperparameters. For the GLM predictive a draw is linearized at the mean of the member
under whose Gaussian it is most probable (the member that drew it, unless two members' Gaussians
overlap, where either linearization serves).

*Kind.* ``kind = "variational"``: the draws are independent draws of a fitted Gaussian, so the
checks of that kind apply (PSIS k-hat of the Gaussian against a log joint, no R-hat or ESS).
``stats["log_joint"]`` is the log joint of the network parameters under the fitted
hyperparameters, ``log p(y | theta, sigma) + log N(theta | 0, (c D)^{-1})``, of the network whose
predictive is reported: the linearized network for ``'glm'`` (against which the GGN Gaussian
is exact up to how far theta* is from the mode, so k-hat checks the convergence and, for the other
curvatures, the curvature's approximation), the network itself for ``'mc'``.
``stats["network_log_joint"]`` is always the network's own; its k-hat against the Gaussian is
in the diagnostics' notes (for these networks it is large: the network's posterior is far from
Gaussian in weight space, which is why the GLM predictive is the default). ``stats["log_q"]`` is
the member's Gaussian log density plus its Laplace log evidence, i.e. the second-order expansion
of the log joint at theta* that the Laplace approximation is, so that with several members (each
with its own hyperparameters and evidence) the log weights are 0 at every member's theta* and
PSIS pools them on one scale. :meth:`Laplace.add_checks` adds "the MAP converged" (the Adam
loss's trend, :func:`~bayesresnet.diagnostics.trend_ratio`) and "the curvature is positive
definite" (with how it was regularized where it was not), and notes the Newton decrement at
theta* when it exceeds :data:`NEWTON_DECREMENT_MAX`: theta*'s distance from the local mode in
posterior standard deviations, which bounds how far any linearized predictive mean is from the
mode's in its own standard deviations. Where the noise is small the posterior is narrow, the
MAP is many of its standard deviations from the mode (Adam and L-BFGS stop well before), and
PSIS k-hat against the linearized network fails for that reason.

Scope: priors :class:`~bayesresnet.priors.Normal` (the fitted factor c keeps the ratios of its
per-site scales) and a homoscedastic Gaussian likelihood; ``"kron"`` for one output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .. import priors as _priors
from ..model import BayesianResNet
from .base import (
    InferenceMethod,
    MethodResult,
    check_positive_float,
    check_positive_int,
    check_seed,
    make_progress,
    seeded_generator,
)
from .ensemble import default_batch_size, initial_points
from .executor import Plan, WorkUnit, derived_seed, run_plan, span, split_range
from .optim import adam_maximize

if TYPE_CHECKING:
    from ..diagnostics import Diagnostics
    from ..posterior import Posterior

__all__ = [
    "CURVATURES",
    "HYPERPARAMETER_MODES",
    "NEWTON_DECREMENT_MAX",
    "PREDICTIVES",
    "Laplace",
    "NetworkLayout",
    "curvature_matrix",
    "glm_predictive",
    "network_jacobian",
]

CURVATURES = ("ggn", "hessian", "kron", "diag")
"""Curvatures of the likelihood: full GGN, full Hessian, Kronecker-factored GGN blocks per site,
diagonal GGN."""

PREDICTIVES = ("glm", "mc")
"""Predictives: the linearized network (GLM) or the network itself at the draws (MC)."""

HYPERPARAMETER_MODES = ("marglik", "fixed")
"""How the prior scale and the noise scale are set: by the Laplace marginal likelihood, or kept
(the model's prior; the MAP's noise scale or the likelihood's fixed noise)."""

NEWTON_DECREMENT_MAX = 0.1
"""Newton decrement ``sqrt(g^T Lambda^{-1} g)`` at the Gaussian's mean (the distance from the mean
to the mode of the local quadratic model, in posterior standard deviations) above which the
diagnostics add a note."""

# Streams of each member, derived from (seed, stream, member).
_STREAM_BATCHES = 11
_STREAM_DRAWS = 12
# Entries of the Jacobian (points x outputs x parameters) computed at once.
_JACOBIAN_ENTRIES = 1 << 22
# Hyperparameters stay within exp(+-_LOG_BOUND) of 1 (standardized units).
_LOG_BOUND = 25.0
# Further rounds stop once no log hyperparameter moved by more than this.
_HYPER_TOL = 1e-4
# L-BFGS iterations of one polish of theta (each one or a few gradients of the log joint).
_POLISH_ITERATIONS = 300


# ------------------------------------------------------------------------------ flat parameters
@dataclass(frozen=True)
class NetworkLayout:
    """Where each network site lives in the flat vector theta of the P network parameters.

    Attributes
    ----------
    names : tuple of str
        Network sites in model order (every latent site except ``noise``).
    shapes : tuple of tuple of int
        Their shapes.
    slices : tuple of (int, int)
        Start and stop of each in theta.
    model_slices : tuple of (int, int)
        Start and stop of each in the model's flat unconstrained vector z.
    prior_precision : tensor (P,)
        The model's prior precision ``1 / s_j^2`` of each parameter.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    slices: tuple[tuple[int, int], ...]
    model_slices: tuple[tuple[int, int], ...]
    prior_precision: Tensor

    @classmethod
    def of(cls, model: BayesianResNet) -> NetworkLayout:
        """The layout of ``model``'s network sites (its prior must be ``priors.Normal``)."""
        if not isinstance(model.prior, _priors.Normal):
            raise ValueError(f"Laplace needs a priors.Normal prior, got {model.prior!r}")
        names, shapes, slices, model_slices, precision = [], [], [], [], []
        offsets = model.flat_slices()
        start = 0
        for name, shape in model.latent_shapes.items():
            if name == "noise":
                continue
            size = math.prod(shape)
            names.append(name)
            shapes.append(tuple(shape))
            slices.append((start, start + size))
            model_slices.append(offsets[name])
            precision.append(torch.full((size,), model.prior.scale_of(name) ** -2.0,
                                        dtype=torch.float64))
            start += size
        return cls(tuple(names), tuple(shapes), tuple(slices), tuple(model_slices),
                   torch.cat(precision))

    @property
    def size(self) -> int:
        """P, the number of network parameters."""
        return self.slices[-1][1]

    def values(self, theta: Tensor) -> dict[str, Tensor]:
        """Site values (*S, *site_shape) from theta (*S, P)."""
        batch = theta.shape[:-1]
        return {name: theta[..., a:b].reshape(*batch, *shape)
                for name, shape, (a, b) in zip(self.names, self.shapes, self.slices, strict=True)}

    def theta(self, values: Mapping[str, Tensor]) -> Tensor:
        """theta (*S, P) from site values (*S, *site_shape)."""
        first, shape = self.names[0], self.shapes[0]
        batch = values[first].shape[:values[first].dim() - len(shape)]
        return torch.cat([values[name].reshape(*batch, -1) for name in self.names], dim=-1)

    def theta_of_z(self, z: Tensor) -> Tensor:
        """theta (*S, P) from the model's flat unconstrained z (*S, dim); Normal sites are real,
        so their unconstrained values are their values."""
        return torch.cat([z[..., a:b] for a, b in self.model_slices], dim=-1)


def _forward(model: BayesianResNet, layout: NetworkLayout, theta: Tensor, x: Tensor) -> Tensor:
    """Network output (*S, N, out_dim) at theta (*S, P)."""
    return model.net.forward(model.net_params(layout.values(theta)), x)


def _chunk_rows(num_outputs: int, num_params: int) -> int:
    return max(1, _JACOBIAN_ENTRIES // max(1, num_outputs * num_params))


def network_jacobian(model: BayesianResNet, theta: Tensor, x: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """Jacobian of the network output with respect to the flat network parameters.

    Computed with ``torch.func`` (reverse mode per input, vectorized over inputs), in chunks of
    inputs.

    Parameters
    ----------
    model : BayesianResNet
    theta : tensor (P,)
        Network parameters, laid out as :class:`NetworkLayout`.
    x : tensor (N, in_dim)
        Inputs (standardized units).

    Returns
    -------
    jacobian : tensor (N, out_dim, P)
    output : tensor (N, out_dim)
        The network output f(x, theta).
    """
    layout = NetworkLayout.of(model)
    theta = theta.detach().to(torch.float64)

    def single(th: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        out = _forward(model, layout, th, xi.unsqueeze(0))[0]
        return out, out

    per_input = torch.func.vmap(torch.func.jacrev(single, has_aux=True), in_dims=(None, 0))
    rows = _chunk_rows(model.net.out_dim, layout.size)
    jacobians, outputs = [], []
    with torch.enable_grad():
        for start in range(0, x.shape[0], rows):
            jac, out = per_input(theta, x[start:start + rows])
            jacobians.append(jac.detach())
            outputs.append(out.detach())
    return torch.cat(jacobians), torch.cat(outputs)


def curvature_matrix(model: BayesianResNet, theta: Tensor, x: Tensor, y: Tensor,
                     kind: str = "ggn") -> Tensor:
    """The likelihood's curvature per output at unit noise, as dense (out_dim, P, P) matrices.

    ``"ggn"``: ``sum_i J_io^T J_io``; ``"hessian"``: the Hessian of ``1/2 sum_i (y_io -
    f_o(x_i, theta))^2`` (not regularized). Dividing by the noise variance of output o gives the
    curvature of the negative log-likelihood; this is what the Laplace posterior precision adds to
    the prior precision.

    Parameters
    ----------
    model : BayesianResNet
    theta : tensor (P,)
    x : tensor (N, in_dim)
    y : tensor (N, out_dim)
    kind : {'ggn', 'hessian'}

    Returns
    -------
    tensor (out_dim, P, P)
    """
    if kind == "ggn":
        jac, _ = network_jacobian(model, theta, x)
        return torch.einsum("nop,noq->opq", jac, jac)
    if kind == "hessian":
        return _hessian(model, NetworkLayout.of(model), theta, x, y)
    raise ValueError(f"curvature_matrix: kind must be 'ggn' or 'hessian', got {kind!r}")


def _hessian(model: BayesianResNet, layout: NetworkLayout, theta: Tensor, x: Tensor,
             y: Tensor) -> Tensor:
    """Hessian of 1/2 sum_i (y_io - f_o)^2 per output o, (out_dim, P, P), in chunks of inputs."""
    def half_rss(th: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        residual = yb - _forward(model, layout, th, xb)
        return 0.5 * (residual * residual).sum(0)

    hessian = torch.func.jacfwd(torch.func.jacrev(half_rss))
    # Forward-over-reverse keeps P tangents of the chunk's graph at once: bound the chunk.
    rows = _chunk_rows(layout.size, getattr(model.net, "width", 1) * (model.net.depth + 2))
    total = torch.zeros(model.net.out_dim, layout.size, layout.size, dtype=torch.float64,
                        device=x.device)
    with torch.enable_grad():
        for start in range(0, x.shape[0], rows):
            total += hessian(theta.detach(), x[start:start + rows], y[start:start + rows])
    return 0.5 * (total + total.transpose(-1, -2))


# ------------------------------------------------------------------------------ curvature
class _Eigen:
    """Precisions ``Lambda = W (sum_o lam_o / sigma_o^2 + c) W^T`` in one orthonormal basis.

    With ``W = D^{1/2} Q`` for the prior precision D (diagonal) and an orthogonal Q: Q holds the
    eigenvectors of ``D^{-1/2} C_o D^{-1/2}`` (full curvature, one output), is the identity
    (diagonal curvature) or is block-diagonal with one Kronecker product of two eigenbases per
    site (Kronecker-factored curvature). ``lam`` (out_dim, P) are the curvature's eigenvalues
    in that basis.
    """

    def __init__(self, sqrt_d: Tensor, lam: Tensor, rotate_t: Callable[[Tensor], Tensor],
                 rotate: Callable[[Tensor], Tensor], state: dict[str, Any],
                 raw_lam: Tensor | None = None) -> None:
        self.sqrt_d = sqrt_d
        self.lam = lam
        self.raw_lam = lam if raw_lam is None else raw_lam  # before negatives were set to 0
        self.rotate_t = rotate_t  # v (..., P) -> Q^T v
        self.rotate = rotate  # w (..., P) -> Q w
        self.state = state  # what rebuilds Q (stored in Posterior.extra)

    def eigenvalues(self, c: Tensor, noise: Tensor, raw: bool = False) -> Tensor:
        """Eigenvalues of ``D^{-1/2} Lambda D^{-1/2}`` in the basis, (P,)."""
        lam = self.raw_lam if raw else self.lam
        return (lam / (noise * noise).unsqueeze(-1)).sum(0) + c

    def to_basis(self, v: Tensor) -> Tensor:
        """Q^T D^{-1/2} v: a gradient-like vector in the eigenbasis."""
        return self.rotate_t(v / self.sqrt_d)

    def logdet_d(self) -> Tensor:
        return 2.0 * self.sqrt_d.log().sum()


class _Dense:
    """Precisions ``Lambda = sum_o C_o / sigma_o^2 + c D`` as dense matrices (several outputs
    with a full curvature)."""

    def __init__(self, mats: Tensor, d: Tensor, raw_mats: Tensor | None = None) -> None:
        self.mats = mats
        self.raw_mats = mats if raw_mats is None else raw_mats
        self.d = d

    def precision(self, c: Tensor, noise: Tensor, raw: bool = False) -> Tensor:
        weights = 1.0 / (noise * noise)
        mats = self.raw_mats if raw else self.mats
        return torch.einsum("o,opq->pq", weights, mats) + torch.diag(c * self.d)


@dataclass
class _LocalModel:
    """The log joint near theta0 to second order, for hyperparameters (c, sigma).

    ``log p(y | theta, sigma) + log N(theta | 0, (c D)^{-1})`` is, for theta = theta0 + delta,
    approximately ``const + g^T delta - 1/2 delta^T Lambda delta`` with
    ``g = sum_o a_o / sigma_o^2 - c D theta0`` and ``Lambda = sum_o C_o / sigma_o^2 + c D``;
    ``a_o = J_o^T (y_o - f_o)`` and ``rss_o`` are the likelihood's gradient and residual sum of
    squares at theta0 (unit noise).
    """

    theta0: Tensor  # (P,)
    a: Tensor  # (out_dim, P)
    rss: Tensor  # (out_dim,)
    num_data: int
    d: Tensor  # (P,)
    curvature: _Eigen | _Dense
    negative_eigenvalues: int = 0  # of the curvature, set to 0

    def min_eigenvalue_ratio(self, c: Tensor, noise: Tensor) -> float:
        """Smallest over largest eigenvalue of ``D^{-1/2} Lambda D^{-1/2}`` before negative
        curvature eigenvalues were set to 0: positive exactly when that precision is positive
        definite."""
        curvature = self.curvature
        if isinstance(curvature, _Eigen):
            eig = curvature.eigenvalues(c, noise, raw=True)
        else:
            scale = 1.0 / self.d.sqrt()
            precision = curvature.precision(c, noise, raw=True) * scale * scale.unsqueeze(-1)
            eig = torch.linalg.eigvalsh(precision)
        return float(eig.min() / eig.max())

    def log_joint0(self, c: Tensor, noise: Tensor) -> Tensor:
        """The log joint at theta0."""
        p = self.theta0.numel()
        log_lik = (-0.5 * self.num_data * torch.log(2 * math.pi * noise * noise)
                   - 0.5 * self.rss / (noise * noise)).sum()
        log_prior = (0.5 * (p * torch.log(c) + self.d.log().sum()) - 0.5 * p * math.log(2 * math.pi)
                     - 0.5 * c * (self.d * self.theta0 * self.theta0).sum())
        return log_lik + log_prior

    def evidence(self, c: Tensor, noise: Tensor, mode: bool = True
                 ) -> tuple[Tensor, Tensor | None]:
        """Laplace log evidence and Newton step.

        With ``mode=True``, at the mode of the quadratic model (theta0 + step): the closed-form
        evidence of the linearized model for the GGN. With ``mode=False``, at theta0 itself
        (no step; the curvature's eigenvalues suffice).

        Returns
        -------
        log_evidence : scalar tensor
        step : tensor (P,) or None
            ``Lambda^{-1} g`` (None with ``mode=False``).
        """
        p = self.theta0.numel()
        base = self.log_joint0(c, noise) + 0.5 * p * math.log(2 * math.pi)
        weights = 1.0 / (noise * noise)
        curvature = self.curvature
        gain, step = 0.0, None
        if isinstance(curvature, _Eigen):
            eig = curvature.eigenvalues(c, noise)
            logdet = curvature.logdet_d() + eig.log().sum()
            if mode:
                g_basis = (weights.unsqueeze(-1) * self._a_basis(curvature)).sum(0) \
                    - c * self._theta_basis(curvature)
                w = g_basis / eig
                gain = 0.5 * (g_basis * w).sum()
                step = curvature.rotate(w) / curvature.sqrt_d
        else:
            precision = curvature.precision(c, noise)
            chol = torch.linalg.cholesky(precision)
            logdet = 2.0 * chol.diagonal().log().sum()
            if mode:
                g = (weights.unsqueeze(-1) * self.a).sum(0) - c * self.d * self.theta0
                half = torch.linalg.solve_triangular(chol, g.unsqueeze(-1), upper=False)
                gain = 0.5 * (half * half).sum()
                step = torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1)
        return base - 0.5 * logdet + gain, step

    def _a_basis(self, curvature: _Eigen) -> Tensor:
        if not hasattr(self, "_a_rot"):
            self._a_rot = curvature.to_basis(self.a)
        return self._a_rot

    def _theta_basis(self, curvature: _Eigen) -> Tensor:
        if not hasattr(self, "_t_rot"):
            # Q^T D^{-1/2} (D theta0) = Q^T D^{1/2} theta0
            self._t_rot = curvature.to_basis(self.d * self.theta0)
        return self._t_rot


def _no_basis(v: Tensor) -> Tensor:
    raise RuntimeError("this curvature was computed without its eigenvectors")


def _site_matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows and columns of a site seen as a matrix for the Kronecker factors."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], 1
    return math.prod(shape[:-1]), shape[-1]


def _clip_psd(mat: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Eigen-decomposition of a symmetric matrix with its negative eigenvalues set to 0.

    Returns
    -------
    clipped, raw : tensors (P,)
        Eigenvalues after and before.
    vectors : tensor (P, P)
        Eigenvectors (columns).
    negative : int
        How many eigenvalues were negative beyond round-off (1e-10 of the largest magnitude:
        a PSD matrix's zero eigenvalues come out slightly negative).
    """
    raw, vec = torch.linalg.eigh(0.5 * (mat + mat.T))
    top = float(raw.abs().max()) if raw.numel() else 0.0
    negative = int((raw < -1e-10 * top).sum())
    return raw.clamp(min=0.0), raw, vec, negative


def _local_model(model: BayesianResNet, layout: NetworkLayout, theta: Tensor, x: Tensor,
                 y: Tensor, kind: str, vectors: bool = True) -> _LocalModel:
    """Curvature, likelihood gradient and residuals at theta (P,).

    ``vectors=False``: a full curvature of one output keeps its eigenvalues only (enough for
    the evidence at theta, ``evidence(mode=False)``; several times cheaper than eigenvectors).
    """
    out_dim, p = model.net.out_dim, layout.size
    d = layout.prior_precision.to(x.device)
    sqrt_d = d.sqrt()
    rows = _chunk_rows(out_dim, p)
    f64 = {"dtype": torch.float64, "device": x.device}  # float64 on the fit's device
    a = torch.zeros(out_dim, p, **f64)
    rss = torch.zeros(out_dim, **f64)
    full = torch.zeros(out_dim, p, p, **f64) if kind in ("ggn", "hessian") else None
    diag = torch.zeros(out_dim, p, **f64) if kind == "diag" else None
    kron = None
    if kind == "kron":
        kron = []
        for shape in layout.shapes:
            r, cols = _site_matrix_shape(shape)
            kron.append([torch.zeros(r, r, **f64), torch.zeros(cols, cols, **f64),
                         torch.zeros((), **f64)])
    for start in range(0, x.shape[0], rows):
        xb, yb = x[start:start + rows], y[start:start + rows]
        jac, out = network_jacobian(model, theta, xb)
        residual = yb - out
        a += torch.einsum("nop,no->op", jac, residual)
        rss += (residual * residual).sum(0)
        if kind == "ggn":
            full += torch.einsum("nop,noq->opq", jac, jac)
        elif diag is not None:
            diag += (jac * jac).sum(0)
        elif kron is not None:
            for (a_, b_), shape, factors in zip(layout.slices, layout.shapes, kron, strict=True):
                r, cols = _site_matrix_shape(shape)
                block = jac[:, 0, a_:b_].reshape(-1, r, cols)
                factors[0] += torch.einsum("nrc,nsc->rs", block, block)
                factors[1] += torch.einsum("nrc,nrd->cd", block, block)
                factors[2] += (block * block).sum()
    negative = 0
    if kind == "hessian":
        full = _hessian(model, layout, theta, x, y)
    if full is not None and out_dim == 1 and not vectors:
        raw = torch.linalg.eigvalsh(full[0] / sqrt_d.unsqueeze(0) / sqrt_d.unsqueeze(1))
        curvature: _Eigen | _Dense = _Eigen(sqrt_d, raw.clamp(min=0.0).unsqueeze(0), _no_basis,
                                            _no_basis, {}, raw_lam=raw.unsqueeze(0))
    elif full is not None and out_dim == 1:
        scaled = full[0] / sqrt_d.unsqueeze(0) / sqrt_d.unsqueeze(1)
        lam, raw, vec, negative = _clip_psd(scaled)
        curvature = _Eigen(
            sqrt_d, lam.unsqueeze(0), lambda v, u=vec: v @ u, lambda w, u=vec: w @ u.T,
            {"eigenvectors": vec}, raw_lam=raw.unsqueeze(0))
    elif full is not None:
        mats = []
        for o in range(out_dim):
            lam, _, vec, count = _clip_psd(full[o])
            negative += count
            mats.append((vec * lam) @ vec.T)
        curvature = _Dense(torch.stack(mats), d, raw_mats=full)
    elif diag is not None:
        curvature = _Eigen(sqrt_d, diag / d, lambda v: v, lambda w: w, {})
    else:
        curvature = _kron_eigen(layout, kron, sqrt_d)
    return _LocalModel(theta.detach().clone(), a, rss, x.shape[0], d, curvature, negative)


def _kron_eigen(layout: NetworkLayout, factors: list[list[Tensor]], sqrt_d: Tensor) -> _Eigen:
    """The block-Kronecker basis: block of site k ~ (R_k kron C_k) / s_k in row-major order."""
    rows_vecs, cols_vecs, lams = [], [], []
    for (a_, _b), (rows, cols, total) in zip(layout.slices, factors, strict=True):
        lam_r, vec_r = torch.linalg.eigh(rows)
        lam_c, vec_c = torch.linalg.eigh(cols)
        scale = float(total) if float(total) > 0 else 1.0
        block = (lam_r.clamp(min=0.0).unsqueeze(-1) * lam_c.clamp(min=0.0).unsqueeze(0)) / scale
        rows_vecs.append(vec_r)
        cols_vecs.append(vec_c)
        # The prior precision is one value per site: d_k I commutes with the rotation.
        lams.append(block.reshape(-1) / sqrt_d[a_] ** 2)
    return _kron_basis(layout, rows_vecs, cols_vecs, torch.cat(lams).unsqueeze(0), sqrt_d)


def _kron_basis(layout: NetworkLayout, rows_vecs: list[Tensor], cols_vecs: list[Tensor],
                lam: Tensor, sqrt_d: Tensor) -> _Eigen:
    shapes = [_site_matrix_shape(shape) for shape in layout.shapes]

    def apply(v: Tensor, transpose: bool) -> Tensor:
        parts = []
        for (a_, b_), (r, cols), u_r, u_c in zip(layout.slices, shapes, rows_vecs, cols_vecs,
                                                strict=True):
            block = v[..., a_:b_].reshape(*v.shape[:-1], r, cols)
            if transpose:  # (U_r kron U_c)^T vec(B) = vec(U_r^T B U_c)
                out = u_r.T @ block @ u_c
            else:
                out = u_r @ block @ u_c.T
            parts.append(out.reshape(*v.shape[:-1], r * cols))
        return torch.cat(parts, dim=-1)

    state = {f"rows.{name}": u for name, u in zip(layout.names, rows_vecs, strict=True)}
    state.update({f"cols.{name}": u for name, u in zip(layout.names, cols_vecs, strict=True)})
    return _Eigen(sqrt_d, lam, lambda v: apply(v, True), lambda w: apply(w, False), state)


# ------------------------------------------------------------------------------ hyperparameters
def _tune(local: _LocalModel, log_c: Tensor, log_noise: Tensor, tune_prior: bool,
          tune_noise: bool, mode: bool = True) -> tuple[Tensor, Tensor]:
    """Maximize the Laplace evidence over log c and log sigma: at the mode of the quadratic
    model (``mode=True``) or at its theta (``mode=False``; see ``_LocalModel.evidence``)."""
    if not (tune_prior or tune_noise):
        return log_c, log_noise
    u_c = log_c.clone().requires_grad_(tune_prior)
    u_s = log_noise.clone().requires_grad_(tune_noise)
    params = [u for u, on in ((u_c, tune_prior), (u_s, tune_noise)) if on]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-11,
                                  tolerance_change=1e-14, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        c = torch.exp(u_c.clamp(-_LOG_BOUND, _LOG_BOUND))
        noise = torch.exp(u_s.clamp(-_LOG_BOUND, _LOG_BOUND))
        loss = -local.evidence(c, noise, mode)[0]
        loss.backward()
        return loss

    with torch.enable_grad():
        for _ in range(5):  # LBFGS may stop early on a flat stretch; restart from there
            before = [u.detach().clone() for u in params]
            optimizer.step(closure)
            if all(bool((u.detach() - b).abs().max() < 1e-12) for u, b in
                   zip(params, before, strict=True)):
                break
    return (u_c.detach().clamp(-_LOG_BOUND, _LOG_BOUND),
            u_s.detach().clamp(-_LOG_BOUND, _LOG_BOUND))


def _log_joint(model: BayesianResNet, layout: NetworkLayout, theta: Tensor, x: Tensor, y: Tensor,
               c: Tensor, noise: Tensor, output: Tensor | None = None) -> Tensor:
    """log p(y | theta, sigma) + log N(theta | 0, (c D)^{-1}) for theta (*S, P), shape (*S,).

    ``output`` (*S, N, out_dim): the network output to score instead of f(x, theta) (the
    linearized network's).
    """
    d = layout.prior_precision.to(theta.device)
    p = theta.shape[-1]
    residual = y - (_forward(model, layout, theta, x) if output is None else output)
    log_lik = (-0.5 * (residual / noise) ** 2 - torch.log(noise)
               - 0.5 * math.log(2 * math.pi)).sum((-1, -2))
    log_prior = (-0.5 * c * (d * theta * theta).sum(-1) + 0.5 * (p * torch.log(c) + d.log().sum())
                 - 0.5 * p * math.log(2 * math.pi))
    return log_lik + log_prior


def _chunked_log_joint(model: BayesianResNet, layout: NetworkLayout, theta: Tensor, x: Tensor,
                       y: Tensor, c: Tensor, noise: Tensor, mean: Tensor | None = None
                       ) -> Tensor:
    """:func:`_log_joint` of theta (S, P), shape (S,), in chunks of inputs: of the network, or
    with ``mean`` (P,) of the network linearized at mean.

    All S draws on all N inputs at once would keep (S, N, width) activations (and tangents)
    per layer: gigabytes at N = 20k and S = 500.
    """
    rows = _chunk_rows(theta.shape[0], getattr(model.net, "width", 1) * (model.net.depth + 2))
    total = _log_joint(model, layout, theta, x[:0], y[:0], c, noise,
                       output=theta.new_zeros(theta.shape[0], 0, y.shape[-1]))  # the prior
    for start in range(0, x.shape[0], rows):
        xb, yb = x[start:start + rows], y[start:start + rows]
        output = (_forward(model, layout, theta, xb) if mean is None
                  else _linearized(model, layout, mean, theta, xb))
        residual = (yb - output) / noise
        total = total + (-0.5 * residual * residual - torch.log(noise)
                         - 0.5 * math.log(2 * math.pi)).sum((-1, -2))
    return total


# ------------------------------------------------------------------------------ the Gaussian
class _Gaussian:
    """One member's N(mean, Lambda^{-1}), from what :meth:`state` stores."""

    def __init__(self, layout: NetworkLayout, kind: str, mean: Tensor, state: Mapping[str, Tensor]
                 ) -> None:
        self.layout = layout
        self.mean = mean
        self.kind = kind
        if "precision_cholesky" in state:
            self.chol = state["precision_cholesky"]
            self.eigen = None
            return
        self.chol = None
        sqrt_d, eig = state["sqrt_prior_precision"], state["eigenvalues"]
        if kind in ("ggn", "hessian"):
            vec = state["eigenvectors"]
            self.eigen = _Eigen(sqrt_d, eig.unsqueeze(0), lambda v: v @ vec, lambda w: w @ vec.T,
                                {})
        elif kind == "diag":
            self.eigen = _Eigen(sqrt_d, eig.unsqueeze(0), lambda v: v, lambda w: w, {})
        else:
            rows = [state[f"rows.{name}"] for name in layout.names]
            cols = [state[f"cols.{name}"] for name in layout.names]
            self.eigen = _kron_basis(layout, rows, cols, eig.unsqueeze(0), sqrt_d)
        self.eig = eig

    @classmethod
    def at(cls, layout: NetworkLayout, kind: str, local: _LocalModel, c: Tensor, noise: Tensor
           ) -> tuple[_Gaussian, dict[str, Tensor]]:
        """The Gaussian of the local model at its theta0, and its state for storage."""
        curvature = local.curvature
        if isinstance(curvature, _Dense):
            state = {"precision_cholesky": torch.linalg.cholesky(curvature.precision(c, noise))}
        else:
            state = {"sqrt_prior_precision": curvature.sqrt_d,
                     "eigenvalues": curvature.eigenvalues(c, noise), **curvature.state}
        return cls(layout, kind, local.theta0, state), state

    def logdet_precision(self) -> Tensor:
        if self.chol is not None:
            return 2.0 * self.chol.diagonal().log().sum()
        return self.eigen.logdet_d() + self.eig.log().sum()

    def sample(self, eps: Tensor) -> Tensor:
        """mean + Lambda^{-1/2} eps for standard normal eps (S, P)."""
        if self.chol is not None:
            delta = torch.linalg.solve_triangular(self.chol.T, eps.T, upper=True).T
        else:
            delta = self.eigen.rotate(eps / self.eig.sqrt()) / self.eigen.sqrt_d
        return self.mean + delta

    def quadratic_terms(self, theta: Tensor) -> Tensor:
        """``(theta - mean)^T Lambda (theta - mean)`` for theta (*S, P), shape (*S,)."""
        delta = theta - self.mean
        if self.chol is not None:
            white = delta @ self.chol  # L^T delta, as rows
        else:
            white = self.eigen.rotate_t(delta * self.eigen.sqrt_d) * self.eig.sqrt()
        return (white * white).sum(-1)

    def log_prob(self, theta: Tensor) -> Tensor:
        """Log density of theta (*S, P), shape (*S,)."""
        p = theta.shape[-1]
        return (-0.5 * self.quadratic_terms(theta) + 0.5 * self.logdet_precision()
                - 0.5 * p * math.log(2 * math.pi))

    def quadratic_forms(self, rows: Tensor) -> Tensor:
        """``j^T Lambda^{-1} j`` for each row j of ``rows`` (..., P), shape (...)."""
        if self.chol is not None:
            flat = rows.reshape(-1, rows.shape[-1])
            half = torch.linalg.solve_triangular(self.chol, flat.T, upper=False)
            return (half * half).sum(0).reshape(rows.shape[:-1])
        white = self.eigen.to_basis(rows) / self.eig.sqrt()
        return (white * white).sum(-1)


def _gaussians(model: BayesianResNet, extra: Mapping[str, Any], kind: str) -> list[_Gaussian]:
    layout = NetworkLayout.of(model)
    means = extra["theta_map"]
    states = extra["gaussian"]
    return [_Gaussian(layout, kind, means[m].to(torch.float64),
                      {k: v[m].to(torch.float64) for k, v in states.items()})
            for m in range(means.shape[0])]


# ------------------------------------------------------------------------------ one member
def _map_objective(model: BayesianResNet, layout: NetworkLayout, x: Tensor, y: Tensor,
                   hyper: dict[str, Tensor], tune_noise: bool, latest: dict[str, Tensor]
                   ) -> Callable[[Tensor, Tensor | None], Tensor]:
    """The log joint of the model's flat z (C, dim) of C members, member m with the prior
    precision ``c_m D`` and, where the noise is a marginal-likelihood hyperparameter, the noise
    scale of ``hyper`` (``log_c`` (C,), ``log_noise`` (C, out_dim)); otherwise the noise is z's
    own (with its prior: the MAP of the noise). Minibatch terms are rescaled to N points. Keeps
    the last z evaluated in ``latest["z"]``."""
    n = x.shape[0]
    d = layout.prior_precision.to(x)  # the MAP computes in the fit's dtype, on its device
    fixed_noise = None if model.likelihood.learns_noise else \
        torch.tensor(model.likelihood.noise, dtype=x.dtype, device=x.device)

    def objective(z: Tensor, batch: Tensor | None) -> Tensor:
        latest["z"] = z
        theta = layout.theta_of_z(z)
        c = hyper["log_c"].exp().to(x.dtype)  # hyperparameters are float64: in the fit's dtype
        total = -0.5 * c * (d * theta * theta).sum(-1)
        if tune_noise and "tuned" in hyper:
            noise = hyper["log_noise"].exp().to(x.dtype).unsqueeze(-2)
        elif fixed_noise is not None:
            noise = fixed_noise
        else:
            values, _ = model.constrain(z)
            noise = values["noise"].unsqueeze(-2)
            total = total + model.site_priors(z)["noise"].log_prob(values["noise"])
        xb, yb = (x, y) if batch is None else (x[batch], y[batch])
        residual = (yb - _forward(model, layout, theta, xb)) / noise
        log_lik = (-0.5 * residual * residual - torch.log(noise)).sum((-1, -2))
        return total + log_lik * (n / xb.shape[0])

    return objective


def _fit_members(model: BayesianResNet, x: Tensor, y: Tensor, z0: Tensor, seed: int,
                 first: int, settings: dict[str, Any], *, progress: bool) -> MethodResult:
    """One unit of work: the MAP fits, Laplace approximations and draws of the members
    ``first, ..., first + C - 1`` starting at ``z0`` (C, dim).

    The members' Adam runs are one batched run (Adam is elementwise: C independent runs on
    the same minibatches, at about the cost of one on a CPU); each member has its own
    hyperparameters, online updates, rounds, Gaussian and draws.
    """
    layout = NetworkLayout.of(model)
    kind = settings["curvature"]
    likelihood = model.likelihood
    tune_prior = settings["prior_scale"] == "marglik"
    tune_noise = settings["noise_scale"] == "marglik" and likelihood.learns_noise
    steps = settings["steps"]
    count = z0.shape[0]
    members = range(first, first + count)
    # The prior starts at the model's; a noise tuned by marginal likelihood is learned with the
    # network (the MAP's noise) until its first update.
    f64 = {"dtype": torch.float64, "device": x.device}
    if likelihood.learns_noise:
        noise0 = torch.ones(model.out_dim, **f64)
    else:
        noise0 = torch.tensor(likelihood.noise, **f64).expand(model.out_dim)
    hyper = {"log_c": torch.zeros(count, **f64),
             "log_noise": noise0.log().expand(count, model.out_dim).clone()}
    latest: dict[str, Tensor] = {}
    objective = _map_objective(model, layout, x, y, hyper, tune_noise, latest)
    updates = settings["marglik_updates"] if (tune_prior or tune_noise) else 0
    # Online marginal likelihood: the hyperparameters are refitted at `updates` evenly spaced
    # steps, the first after 1 / (updates + 1) of the run (Immer et al. 2021's burn-in), so the
    # network is trained under them instead of overfitting first.
    update_at = {max(1, round(steps * (k + 1) / (updates + 1))) for k in range(updates)}
    every = max(1, steps // 100)
    with make_progress(progress, steps, f"laplace {span(members, 'member')}") as bar:
        def callback(step: int, values: Tensor) -> None:
            if step + 1 in update_at:
                z_now = latest["z"].detach()
                log_c, log_noise = hyper["log_c"].clone(), hyper["log_noise"].clone()
                if tune_noise and "tuned" not in hyper:  # start from the MAP's noise
                    log_noise = model.constrain(z_now)[0]["noise"].log().to(**f64)
                for m in range(count):
                    local = _local_model(model, layout, layout.theta_of_z(z_now[m]), x, y, kind,
                                         vectors=False)
                    log_c[m], log_noise[m] = _tune(local, log_c[m], log_noise[m], tune_prior,
                                                   tune_noise, mode=False)
                hyper["log_c"], hyper["log_noise"] = log_c, log_noise
                hyper["tuned"] = torch.ones(())
            if progress and ((step + 1) % every == 0 or step + 1 == steps):
                bar.update(step + 1 - bar.n)
                bar.set_postfix(loss=f"{-values.mean().item():.4g}", refresh=False)

        batches = seeded_generator(derived_seed(seed, _STREAM_BATCHES, first))
        z, history = adam_maximize(objective, z0, steps, settings["lr"],
                                   num_data=x.shape[0], batch_size=settings["batch_size"],
                                   generator=batches, callback=callback)
        with torch.no_grad():
            final = objective(z, None).detach()
    if likelihood.learns_noise and not (tune_noise and updates):
        with torch.no_grad():
            hyper["log_noise"] = model.constrain(z)[0]["noise"].log().to(**f64)
    results = []
    for m, member in enumerate(members):
        result = _laplace_member(model, layout, x, y, layout.theta_of_z(z[m]).detach().to(**f64),
                                 hyper["log_c"][m], hyper["log_noise"][m], seed, member, settings,
                                 tune_prior, tune_noise)
        result.stats["map_loss"] = (-history[:, m:m + 1]).cpu().numpy()
        result.stats["map_final_loss"] = (-final[m:m + 1]).cpu().numpy()
        results.append(result)
    return _combine_members(results)


def _laplace_member(model: BayesianResNet, layout: NetworkLayout, x: Tensor, y: Tensor,
                    theta: Tensor, log_c: Tensor, log_noise: Tensor, seed: int, member: int,
                    settings: dict[str, Any], tune_prior: bool, tune_noise: bool
                    ) -> MethodResult:
    """Member ``member``'s rounds, Gaussian and draws from its Adam result theta (P,) and the
    hyperparameters it was trained under (the stats ``map_loss`` and ``map_final_loss`` are
    the caller's)."""
    kind = settings["curvature"]
    # Rounds: hyperparameters at theta, then theta polished to the MAP under them. The final
    # Gaussian is at the polished theta with the hyperparameters it was polished under.
    # The evidence at the quadratic model's mode is bounded in sigma only for the GGN (and the
    # Hessian, the true second-order model): ``a^T C^+ a <= rss`` there, while an approximate
    # (diagonal or Kronecker-factored) C can give ``a^T C^{-1} a > rss`` away from the mode, so
    # the gain ``g^T Lambda^{-1} g / 2 ~ a^T C^{-1} a / (2 sigma^2)`` outgrows the residual
    # term and the evidence diverges as sigma -> 0 (the noise and prior scale collapsed to
    # exp(-25) after a few or minibatch Adam steps). Those curvatures take the evidence at theta
    # (the standard Laplace evidence), so theta is first polished to the MAP under the
    # hyperparameters it was trained under: Adam's theta, off the mode, would bias them.
    at_mode = kind in ("ggn", "hessian")
    if not at_mode and settings["max_rounds"] > 0:
        theta = _polish(model, layout, theta, x, y, log_c.exp(), log_noise.exp())
    rounds = 0
    for rounds in range(1, settings["max_rounds"] + 1):
        local = _local_model(model, layout, theta, x, y, kind)
        new_c, new_noise = _tune(local, log_c, log_noise, tune_prior, tune_noise, mode=at_mode)
        moved = max(float((new_c - log_c).abs()), float((new_noise - log_noise).abs().max()))
        log_c, log_noise = new_c, new_noise
        theta = _polish(model, layout, theta, x, y, log_c.exp(), log_noise.exp())
        if rounds > 1 and moved < _HYPER_TOL:
            break
    c, noise = log_c.exp(), log_noise.exp()
    local = _local_model(model, layout, theta, x, y, kind)
    with torch.no_grad():
        _, step = local.evidence(c, noise)
        g = (local.a / (noise * noise).unsqueeze(-1)).sum(0) - c * local.d * theta
        decrement = float((g * step).sum().clamp(min=0.0))
    gaussian, state = _Gaussian.at(layout, kind, local, c, noise)
    with torch.no_grad():
        log_evidence, _ = local.evidence(c, noise, mode=False)
        generator = seeded_generator(derived_seed(seed, _STREAM_DRAWS, member))
        eps = torch.randn(settings["num_draws"], layout.size, generator=generator,
                          dtype=torch.float64, device=generator.device).to(x.device)
        draws_theta = gaussian.sample(eps)
        log_q = gaussian.log_prob(draws_theta) + log_evidence
        network_log_joint = _chunked_log_joint(model, layout, draws_theta, x, y, c, noise)
        if settings["predictive"] == "glm" and kind == "ggn":
            # The linearized network's log joint is quadratic with the GGN precision Lambda:
            # its value at theta* plus g^T delta - delta^T Lambda delta / 2, exactly.
            delta = draws_theta - theta
            log_joint = (_log_joint(model, layout, theta, x, y, c, noise) + delta @ g
                         - 0.5 * gaussian.quadratic_terms(draws_theta))
        elif settings["predictive"] == "glm":
            log_joint = _chunked_log_joint(model, layout, draws_theta, x, y, c, noise,
                                           mean=theta)
        else:
            log_joint = network_log_joint
    draws = {name: value.unsqueeze(0) for name, value in layout.values(draws_theta).items()}
    if model.likelihood.learns_noise:
        draws["noise"] = noise.expand(settings["num_draws"], model.out_dim).unsqueeze(0).clone()
    unregularized = local.min_eigenvalue_ratio(c, noise)
    stats = {
        "log_joint": log_joint.unsqueeze(0).cpu().numpy(),
        "log_q": log_q.unsqueeze(0).cpu().numpy(),
        "network_log_joint": network_log_joint.unsqueeze(0).cpu().numpy(),
        "log_evidence": np.array([float(log_evidence)]),
        "newton_decrement": np.array([math.sqrt(decrement)]),
        "rounds": np.array([rounds]),
        "negative_eigenvalues": np.array([local.negative_eigenvalues]),
        "min_eigenvalue_ratio": np.array([unregularized]),
    }
    extra = {
        "theta_map": theta.unsqueeze(0),
        "noise": noise.unsqueeze(0).clone(),
        "prior_precision": (c * layout.prior_precision.to(c.device)).unsqueeze(0),
        "gaussian": {k: v.unsqueeze(0).clone() for k, v in state.items()},
    }
    return MethodResult(draws, stats, extra)


def _polish(model: BayesianResNet, layout: NetworkLayout, theta: Tensor, x: Tensor, y: Tensor,
            c: Tensor, noise: Tensor, iterations: int = _POLISH_ITERATIONS) -> Tensor:
    """The MAP under (c, sigma) from theta: full-batch L-BFGS on the log joint.

    A Gauss-Newton step is exact for the linearized network but overshoots on the network
    itself (its second-order terms, weighted by the residuals over sigma^2, are not small), so
    the mode is found by a quasi-Newton method with a strong-Wolfe line search instead.
    """
    current = theta.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([current], lr=1.0, max_iter=iterations, tolerance_grad=1e-13,
                                  tolerance_change=0.0, history_size=50,
                                  line_search_fn="strong_wolfe")
    scale = 1.0 / x.shape[0]

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = -scale * _log_joint(model, layout, current, x, y, c, noise)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    result = current.detach()
    with torch.no_grad():
        before = float(_log_joint(model, layout, theta, x, y, c, noise))
        after = float(_log_joint(model, layout, result, x, y, c, noise))
    return result if math.isfinite(after) and after >= before else theta


def _stack(trees: list[Any]) -> Any:
    first = trees[0]
    if isinstance(first, Mapping):
        return {k: _stack([t[k] for t in trees]) for k in first}
    return torch.cat(trees, dim=0)


def _combine_members(results: list[MethodResult]) -> MethodResult:
    """One result with every member as a chain, in member order."""
    first = results[0]
    draws = {name: torch.cat([r.draws[name] for r in results], dim=0) for name in first.draws}
    stats = {}
    for name in first.stats:
        axis = 1 if name == "map_loss" else 0
        stats[name] = np.concatenate([r.stats[name] for r in results], axis=axis)
    extra = _stack([r.extra for r in results])
    return MethodResult(draws, stats, extra)


# ------------------------------------------------------------------------------ the method
@dataclass
class Laplace(InferenceMethod):
    """Linearized (GGN) Laplace approximation at MAP fits (see the module notes).

    Parameters
    ----------
    members : int
        Number of Laplace approximations at distinct MAP modes (each from its own network
        initialization): the result has one chain per member.
    members_per_unit : int, optional
        Members per unit of work: consecutive groups of this size (the last may be smaller),
        whose MAP fits run as one batched Adam run (about the cost of one on a CPU) and which
        an executor can run on separate workers. Default: all members in one unit. The members
        of a group share their minibatches, so with ``batch_size`` below the number of training
        points the grouping changes the result; ``members_per_unit=1`` fits each member
        exactly as a one-member fit would.
    steps : int
        Adam steps of each member's MAP fit.
    lr : float
        Initial Adam learning rate of the MAP fit (cosine-decayed to a tenth).
    batch_size : int, optional
        MAP minibatch size; None: full batch when N <= 1024, else 256.
    curvature : {'ggn', 'hessian', 'kron', 'diag'}
        Likelihood curvature: the full generalized Gauss-Newton matrix (default), the full
        Hessian (negative eigenvalues set to 0, and reported), one Kronecker-factored GGN block
        per parameter site (one output only), or the GGN's diagonal. The last two drop the
        correlations between sites (and, for 'diag', between parameters) and scale to large
        networks.
    predictive : {'glm', 'mc'}
        The linearized network's predictive (default), or the network run at the draws.
    prior_scale : {'marglik', 'fixed'}
        Fit a factor on the prior precision by the Laplace marginal likelihood (keeping the
        ratios of the prior's per-site scales), or keep the model's prior.
    noise_scale : {'marglik', 'fixed'}
        Fit the noise scale by the Laplace marginal likelihood, or keep the MAP's. A likelihood
        with a fixed noise keeps it either way.
    num_draws : int
        Draws per member.
    marglik_updates : int
        How often the hyperparameters tuned by marginal likelihood are refitted during the Adam
        run (evenly spaced, the first after 1/(marglik_updates + 1) of the steps); 0 fits them
        after it only.
    max_rounds : int
        Rounds of (hyperparameters by marginal likelihood at theta, L-BFGS polish of theta to the
        MAP under them) after the Adam run; more rounds stop once the hyperparameters stop
        moving. 0 keeps Adam's result as it is.

    Notes
    -----
    ``MethodResult.draws``: every latent site as (members, num_draws, *site_shape); ``noise``
    is the fitted noise scale repeated. ``stats``: ``map_loss`` (steps, members), the Adam
    objective's negative (the log joint up to constants, under the hyperparameters of that
    step; on the step's minibatch, rescaled to N points); ``map_final_loss`` (members,), at
    its end on the full data; ``log_joint`` and ``log_q`` (members, num_draws), see the module
    notes; ``network_log_joint`` (members, num_draws), the network's own log joint at the draws
    (the same as ``log_joint`` with ``predictive='mc'``); per member: ``log_evidence`` (the
    Laplace log marginal likelihood at the Gaussian's mean), ``newton_decrement``, ``rounds``,
    ``negative_eigenvalues`` (of the Hessian, set to 0) and ``min_eigenvalue_ratio`` (smallest
    over largest eigenvalue of the scaled posterior precision before that). ``extra``
    (standardized units), per member: ``theta_map`` (members, P), the Gaussian's mean and the
    point of linearization; ``noise`` (members, out_dim); ``prior_precision`` (members, P);
    ``gaussian``, the precision's factors.

    Examples
    --------
    >>> post = brn.fit(model, x, y, method=Laplace(), seed=0)        # doctest: +SKIP
    >>> mean, var = glm_predictive(post, x_new)                      # doctest: +SKIP
    """

    members: int = 1
    members_per_unit: int | None = None
    steps: int = 3000
    lr: float = 0.01
    batch_size: int | None = None
    curvature: str = "ggn"
    predictive: str = "glm"
    prior_scale: str = "marglik"
    noise_scale: str = "marglik"
    num_draws: int = 500
    marglik_updates: int = 10
    max_rounds: int = 1

    name: ClassVar[str] = "laplace"
    records_elbo: ClassVar[bool] = False
    kind: ClassVar[str] = "variational"
    thread_safe: ClassVar[bool] = True

    def check_settings(self) -> None:
        for field in ("members", "steps", "num_draws"):
            check_positive_int("Laplace", field, getattr(self, field))
        check_positive_float("Laplace", "lr", self.lr)
        if self.members_per_unit is not None:
            check_positive_int("Laplace", "members_per_unit", self.members_per_unit)
        if self.batch_size is not None:
            check_positive_int("Laplace", "batch_size", self.batch_size)
        for field in ("marglik_updates", "max_rounds"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"Laplace: {field} must be a non-negative integer, "
                                 f"got {value!r}")
        for field, allowed in (("curvature", CURVATURES), ("predictive", PREDICTIVES),
                               ("prior_scale", HYPERPARAMETER_MODES),
                               ("noise_scale", HYPERPARAMETER_MODES)):
            value = getattr(self, field)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"Laplace: {field} must be one of {list(allowed)}, "
                                 f"got {value!r}")

    def validate(self, model: BayesianResNet) -> None:
        if not isinstance(model.prior, _priors.Normal):
            raise ValueError(f"Laplace: the model's prior must be priors.Normal (the Laplace "
                             f"approximation fits the prior scale itself), got {model.prior!r}")
        if model.likelihood.heteroscedastic:
            raise ValueError("Laplace: the likelihood must have one noise scale per output "
                             "(heteroscedastic=False)")
        if self.curvature == "kron" and model.out_dim != 1:
            raise ValueError(f"Laplace: curvature='kron' supports one output, the model has "
                             f"{model.out_dim}; use 'ggn' or 'diag'")

    def run(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int,
            progress: bool) -> MethodResult:
        return run_plan(self.plan(model, x, y, seed), progress=progress)

    def plan(self, model: BayesianResNet, x: Tensor, y: Tensor, seed: int) -> Plan:
        """One unit of work per group of ``members_per_unit`` members (their MAP fits, Laplace
        approximations and draws); running every unit and combining is exactly :meth:`run`,
        wherever the units run."""
        self.check_settings()
        self.validate(model)
        seed = check_seed(seed)
        # The MAP runs in the fit's dtype; the curvature, evidence and draws in float64 (on the
        # fit's device), since the curvature's eigenvalues span many orders of magnitude.
        z0 = initial_points(model, seeded_generator(seed), self.members).to(x)
        settings = {"steps": int(self.steps), "lr": float(self.lr),
                    "batch_size": (default_batch_size(x.shape[0]) if self.batch_size is None
                                   else int(self.batch_size)),
                    "curvature": self.curvature, "prior_scale": self.prior_scale,
                    "noise_scale": self.noise_scale, "num_draws": int(self.num_draws),
                    "marglik_updates": int(self.marglik_updates),
                    "max_rounds": int(self.max_rounds), "predictive": self.predictive}
        per_unit = self.members if self.members_per_unit is None else self.members_per_unit
        groups = split_range(self.members, per_unit)
        units = tuple(
            WorkUnit(f"Laplace {span(group, 'member')} of {self.members}", _fit_members,
                     (model, x, y, z0[group.start:group.stop], seed, group.start, settings))
            for group in groups)
        if self.members == 1:
            hint = ("Laplace: one member is one unit of work, so an executor runs it on one "
                    "worker; set Laplace(members=...) to fit several")
        elif len(groups) == 1:
            hint = (f"Laplace: all {self.members} members form one unit of work, so an executor "
                    "fits them on one worker; set Laplace(members_per_unit=...) to spread them")
        else:
            hint = ""
        return Plan(units, _combine_members, desc=f"Laplace ({self.members} members)", hint=hint)

    # ------------------------------------------------------------------ hooks of Posterior
    def predictive_loc_scale(self, model: BayesianResNet, values: Mapping[str, Tensor],
                             x_scaled: Tensor, extra: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Predictive mean and noise scale of each draw (standardized units), (S, N, out_dim).

        ``'glm'``: the linearized network ``f(x, mu) + J(x) (theta - mu)`` at the mean mu of the
        draw's member (one batched Jacobian-vector product); ``'mc'``: the network.
        """
        if self.predictive == "mc":
            return model.loc_scale(values, x_scaled)
        layout = NetworkLayout.of(model)
        theta = layout.theta(values).to(torch.float64)
        gaussians = _gaussians(model, extra, self.curvature)
        if len(gaussians) == 1:
            member = torch.zeros(theta.shape[0], dtype=torch.long)
        else:
            member = torch.stack([g.log_prob(theta) for g in gaussians]).argmax(0)
        loc = torch.empty(theta.shape[0], x_scaled.shape[0], model.net.out_dim, dtype=torch.float64)
        for m, gaussian in enumerate(gaussians):
            index = (member == m).nonzero().squeeze(-1)
            if index.numel():
                loc[index] = _linearized(model, layout, gaussian.mean, theta[index], x_scaled)
        _, scale = model.likelihood.loc_scale(loc, values)
        return loc, scale.expand_as(loc)

    def add_checks(self, posterior: Posterior, diag: Diagnostics) -> None:
        """"MAP converged" and "curvature positive definite" (see the module notes)."""
        from ..diagnostics import TREND_MAX, trend_ratio

        stats = posterior.stats
        if "map_loss" in stats:
            loss = np.asarray(stats["map_loss"], dtype=np.float64)
            loss = loss.reshape(loss.shape[0], -1)
            ratios = np.array([trend_ratio(loss[:, m]) for m in range(loss.shape[1])])
            diag.details["map_loss_trend"] = ratios
            trend = float(np.nan if np.isnan(ratios).any() else ratios.max())
            if loss.shape[0] < 20:
                diag.notes.append(f"only {loss.shape[0]} Adam steps: too few to judge the MAP's "
                                  "convergence")
            else:
                diag.add_check("MAP loss trend (last 10%)", trend, "<=", TREND_MAX,
                               f"the MAP loss still moves at the end of the Adam run "
                               f"({trend:.2g} x its noise or 1% of its total change): raise "
                               "Laplace(steps=...)")
        if "newton_decrement" in stats:
            decrement = np.asarray(stats["newton_decrement"], dtype=np.float64).reshape(-1)
            diag.details["newton_decrement"] = decrement
            value = float(np.max(decrement))
            if not value <= NEWTON_DECREMENT_MAX:
                diag.notes.append(
                    f"the Gaussian's mean is {value:.3g} posterior standard deviations (Newton "
                    "decrement) from the mode of the local quadratic model: the MAP is not "
                    "converged at the posterior's resolution, so the Gaussian is not quite the "
                    "linearized network's posterior (see PSIS k-hat); each linearized predictive "
                    f"mean is within {value:.3g} of its epistemic standard deviations of that "
                    "mode's")
        if "min_eigenvalue_ratio" in stats:
            ratio = np.asarray(stats["min_eigenvalue_ratio"], dtype=np.float64).reshape(-1)
            negative = np.asarray(stats.get("negative_eigenvalues", np.zeros_like(ratio)),
                                  dtype=np.int64).reshape(-1)
            diag.details["min_eigenvalue_ratio"] = ratio
            worst = int(np.argmin(ratio))
            value = float(ratio[worst])
            diag.add_check(
                "curvature positive definite", value, ">", 0.0,
                f"the posterior precision at member {worst}'s MAP is not positive definite "
                f"(smallest / largest eigenvalue {value:.3g}; the Hessian had "
                f"{int(negative[worst])} negative eigenvalue(s)): it was regularized by setting "
                "the likelihood curvature's negative eigenvalues to 0; the point may be a "
                "saddle: raise steps, or use curvature='ggn'")
            if negative.sum() and value > 0:
                diag.notes.append(
                    f"the Hessian had {int(negative.sum())} negative eigenvalue(s) in all, set "
                    "to 0; the posterior precision with the prior was positive definite")
        if "noise" in posterior.extra and "prior_precision" in posterior.extra:
            diag.details["noise"] = np.asarray(posterior.extra["noise"])
            diag.details["prior_precision_mean"] = np.asarray(
                posterior.extra["prior_precision"]).mean(-1)
        if self.predictive == "glm" and "network_log_joint" in stats and "log_q" in stats:
            from ..diagnostics import psis_khat

            log_w = (np.asarray(stats["network_log_joint"], dtype=np.float64)
                     - np.asarray(stats["log_q"], dtype=np.float64)).reshape(-1)
            khat = psis_khat(log_w) if np.isfinite(log_w).all() else math.inf
            diag.details["network_khat"] = khat
            diag.notes.append(
                "PSIS k-hat is of the Gaussian against the log joint of the linearized network, "
                "whose predictive (GLM) is reported; against the network's own log joint it is "
                f"{khat:.2f}, which says how far the network's posterior is from Gaussian "
                "(predictive='mc' runs the network at the draws and is checked against that)")


def _linearized(model: BayesianResNet, layout: NetworkLayout, mean: Tensor, theta: Tensor,
                x: Tensor) -> Tensor:
    """f(x, mean) + J(x) (theta - mean) for theta (S, P), shape (S, N, out_dim)."""
    tangent = theta - mean

    def f(th: Tensor) -> Tensor:
        return _forward(model, layout, th, x)

    def one(t: Tensor) -> Tensor:
        return torch.func.jvp(f, (mean,), (t,))[1]

    # The network's in-place, graph-free branch is for plain no-grad passes only.
    with torch.enable_grad():
        base = f(mean).detach()
        change = torch.func.vmap(one)(tangent).detach()
    return base + change


# ------------------------------------------------------------------------------ closed form
def glm_predictive(posterior: Posterior, x: Any, include_noise: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The closed-form GLM predictive of a Laplace posterior, in original units.

    For member c with mean mu_c and precision Lambda_c, ``f(x) ~ N(f(x, mu_c),
    J_c(x) Lambda_c^{-1} J_c(x)^T)`` (J_c the Jacobian at mu_c); with several members the
    equal-weight mixture's mean and variance.

    Parameters
    ----------
    posterior : Posterior
        A fit with :class:`Laplace` (either predictive: the Gaussian is the same).
    x : array (N, in_dim)
        Inputs in original units.
    include_noise : bool
        Add each member's noise variance (the predictive of new observations).

    Returns
    -------
    mean : ndarray (N, out_dim)
    var : ndarray (N, out_dim)
        Marginal variances of f (and of the observation with ``include_noise``).
    """
    from ..posterior import check_inputs

    if not isinstance(posterior.method, Laplace):
        raise ValueError(f"glm_predictive needs a Laplace posterior, got method "
                         f"{posterior.method.name!r}")
    model = posterior.model
    x_scaled = posterior.x_scaler.transform(check_inputs(x, model.in_dim))
    gaussians = _gaussians(model, posterior.extra, posterior.method.curvature)
    noise = posterior.extra["noise"].to(torch.float64)
    means, variances = [], []
    for m, gaussian in enumerate(gaussians):
        jac, out = network_jacobian(model, gaussian.mean, x_scaled)
        var = gaussian.quadratic_forms(jac)
        if include_noise:
            var = var + noise[m] ** 2
        means.append(out)
        variances.append(var)
    mean_s = torch.stack(means)
    mean = mean_s.mean(0)
    var = (torch.stack(variances) + mean_s * mean_s).mean(0) - mean * mean \
        if len(gaussians) > 1 else variances[0]
    scale = posterior.y_scaler.inverse_scale(torch.ones_like(mean))
    return (posterior.y_scaler.inverse_transform(mean).numpy(),
            (var.clamp(min=0.0) * scale * scale).numpy())
