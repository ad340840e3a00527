"""The neural-ODE view of a ResNet: adjoint versus backprop gradients, Jacobian spectra, stiffness.

A :class:`~bayesresnet.resnet.ResNet` integrates dh/dt = f(t, h) = act(W(t) h + b(t)) on [0, T]
with L steps of an explicit scheme. Its gradient can be computed in two ways that agree only as
L grows:

* discretize-then-optimize (:func:`backprop_gradient`): differentiate the discrete forward pass
  exactly (autograd). This is what training a ResNet does.
* optimize-then-discretize (:func:`adjoint_gradient`): write down the continuous adjoint equation
  da/dt = -(df/dh)^T a with a(T) = dloss/dh(T), and dloss/dtheta = int_0^T a^T df/dtheta dt, then
  integrate it backwards on the same grid with the network's own scheme. This is the neural-ODE
  adjoint method.

For f = act(W h + b) the Jacobian is J = diag(act'(W h + b)) W; its spectrum along the trajectory
(:func:`stiffness`) says how stiff the learned ODE is and whether explicit Euler is stable on the
grid, and :func:`jacobian_penalty` is a cheap differentiable regularizer on it.

Under posterior uncertainty the spectrum is a distribution: :func:`stability` (for parameter
draws) and :func:`posterior_stability` (for a :class:`~bayesresnet.Posterior`, also
``Posterior.stability``) give the eigenvalues of every draw along the trajectories of given
inputs, the posterior probability that every explicit Euler step is stable
(|1 + dt lambda| <= 1 for all eigenvalues), per layer and overall, and the stiffness ratio with
a credible interval, as an ``xarray.Dataset``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .resnet import ACTIVATIONS, INTEGRATORS, ResNet
from .validation import check_inputs, check_posterior

if TYPE_CHECKING:
    import xarray as xr

    from .posterior import Posterior

__all__ = [
    "ACTIVATION_DERIVATIVES",
    "Stiffness",
    "activation_derivative",
    "adjoint_gradient",
    "amplification_factor",
    "backprop_gradient",
    "jacobian_penalty",
    "posterior_stability",
    "squared_error",
    "stability",
    "stability_polynomial",
    "stiffness",
]


def _sigmoid_silu_grad(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


ACTIVATION_DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": lambda z: 1.0 - torch.tanh(z) ** 2,
    "relu": lambda z: (z > 0).to(z.dtype),
    "silu": _sigmoid_silu_grad,
    "identity": torch.ones_like,
}


def activation_derivative(activation: str, z: Tensor) -> Tensor:
    """Elementwise derivative act'(z) of a named activation (differentiable in z except relu).

    Raises
    ------
    ValueError
        If the activation has no known derivative.
    """
    if activation not in ACTIVATION_DERIVATIVES:
        raise ValueError(f"no derivative known for activation {activation!r}; expected one of "
                         f"{sorted(ACTIVATION_DERIVATIVES)}")
    return ACTIVATION_DERIVATIVES[activation](z)


# ---------------------------------------------------------------------------- input checks
def _check_net(net: Any) -> ResNet:
    if not isinstance(net, ResNet):
        raise ValueError(f"net must be a bayesresnet.ResNet, got {type(net).__name__}")
    return net


def _net_params(net: ResNet, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    missing = [name for name in net.param_shapes if name not in params]
    if missing:
        raise ValueError(f"params is missing sites {missing}")
    sample_shape = net.sample_shape(params)
    out = {}
    for name, shape in net.param_shapes.items():
        value = params[name]
        if not isinstance(value, Tensor) or tuple(value.shape) != (*sample_shape, *shape):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"params[{name!r}] must have shape (*S, *{shape}) with "
                             f"S={tuple(sample_shape)}, got {got}")
        out[name] = value
    return out


def _as_targets(net: ResNet, y: Any, n: int, like: Tensor) -> Tensor:
    y = torch.as_tensor(y, dtype=like.dtype)
    if y.dim() == 1:
        y = y.unsqueeze(-1)
    if y.dim() != 2 or y.shape != (n, net.out_dim):
        raise ValueError(f"y must have shape ({n},) or ({n}, {net.out_dim}), "
                         f"got {tuple(y.shape)}")
    return y


def squared_error(net: ResNet, params: Mapping[str, Tensor], x: Tensor, y: Any) -> Tensor:
    """The loss both gradients differentiate: sum over inputs and outputs of (f(x) - y)^2.

    Parameters
    ----------
    net : ResNet
    params : mapping site -> tensor (*S, *site_shape)
    x : tensor (N, in_dim)
    y : tensor (N,) or (N, out_dim)

    Returns
    -------
    Tensor (*S,).
    """
    net = _check_net(net)
    out = net.forward(_net_params(net, params), x)
    y = _as_targets(net, y, x.shape[0], out)
    return ((out - y) ** 2).sum((-2, -1))


# ---------------------------------------------------------------------------- gradients
def backprop_gradient(net: ResNet, params: Mapping[str, Tensor], x: Tensor, y: Any
                      ) -> dict[str, Tensor]:
    """Gradient of sum((f(x) - y)^2) by autograd through the discrete forward pass.

    Discretize-then-optimize: the exact gradient of the depth-L network, whatever its integrator.

    Parameters
    ----------
    net : ResNet
    params : mapping site -> tensor (*S, *site_shape)
        Leading sample dims S are allowed (none is fine); each draw gets its own gradient.
    x : tensor (N, in_dim)
    y : tensor (N,) or (N, out_dim)

    Returns
    -------
    dict site -> tensor (*S, *site_shape), detached.
    """
    net = _check_net(net)
    leaves = {k: v.detach().clone().requires_grad_(True)
              for k, v in _net_params(net, params).items()}
    with torch.enable_grad():
        # Draws do not interact, so the gradient of the summed loss is each draw's own gradient.
        loss = squared_error(net, leaves, x, y).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


def _field_and_vjp(net: ResNet, h: Tensor, weight: Tensor, bias: Tensor, adj: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """f, (df/dh)^T a, (df/dW)^T a and (df/db)^T a for f = act(W h + b), summed over inputs.

    h, adj (*S, N, width); weight (*S, width, width); bias (*S, width). Returns f, J^T a of shape
    (*S, N, width), the W cotangent (*S, width, width) and the b cotangent (*S, width).
    """
    z = h @ weight.transpose(-1, -2) + bias.unsqueeze(-2)
    u = activation_derivative(net.activation, z) * adj
    act = ACTIVATIONS[net.activation]
    return (act(z), u @ weight, torch.einsum("...ni,...nj->...ij", u, h), u.sum(-2))


def adjoint_gradient(net: ResNet, params: Mapping[str, Tensor], x: Tensor, y: Any
                     ) -> dict[str, Tensor]:
    """Gradient of sum((f(x) - y)^2) by the continuous adjoint method, discretized on the grid.

    Optimize-then-discretize. The continuous gradient of the ODE network is

        a(T) = dloss/dh(T),   da/dt = -J(t)^T a,   J = df/dh = diag(act'(W h + b)) W,
        dloss/dA_k = int_0^T phi_k(t) (df/dW)^T a dt,   (df/dW)^T a = (act' * a) h^T,
        dloss/dc_k = int_0^T phi_k(t) (df/db)^T a dt,   (df/db)^T a = act' * a,

    (for a low-rank network, W(t) = U(t) V(t)^T, the W cotangent G gives G V(t) for U and
    G^T U(t) for V, projected on the basis in the same way) plus the input and output layers
    (exact, they are not part of the ODE).
    The augmented backward system (state h, adjoint a, parameter cotangents) is integrated from
    T to 0 with the network's own explicit scheme run in reverse time on the same grid: Euler for
    the Euler net, and midpoint or RK4 for those. Each backward step n (from t_{n+1} to t_n)
    starts from the stored forward state h_{n+1} (checkpointing; the state is never integrated
    backwards over more than one step, which would be unstable) and uses step n's vector field,
    so for the Piecewise basis it sees layer n's weights throughout.

    For Euler this reads a_n = a_{n+1} + dt J_n(h_{n+1})^T a_{n+1} and the cotangent of step n's
    weights is dt (df/dW)^T a_{n+1} at h_{n+1}. For the scalar linear net f = w h this gives
    dloss/dw = sum_n dt a_{n+1} h_{n+1} = sum_n dt a_n h_n = 2 (h_L - y) L dt (1 + dt w)^L x,
    against backprop's (1 + dt w)^(L-1): the two views differ by O(dt^p) and agree as L grows.

    Parameters
    ----------
    net : ResNet
    params : mapping site -> tensor (*S, *site_shape)
        Leading sample dims S are allowed (none is fine); each draw gets its own gradient.
    x : tensor (N, in_dim)
    y : tensor (N,) or (N, out_dim)

    Returns
    -------
    dict site -> tensor (*S, *site_shape), in ``net.param_shapes`` order.
    """
    net = _check_net(net)
    with torch.no_grad():
        params = {k: v.detach() for k, v in _net_params(net, params).items()}
        states = net.hidden_states(params, x)
        out = net.readout(params, states[-1])
        y = _as_targets(net, y, x.shape[0], out)
        residual = 2.0 * (out - y)  # dloss/df(x), (*S, N, out_dim)
        grads = {
            "output_weight": torch.einsum("...no,...nw->...ow", residual, states[-1]),
            "output_bias": residual.sum(-2),
        }
        adj = residual @ params["output_weight"]

        tableau, dt = net.tableau, net.dt
        # Reverse-time stage i sits at t_{n+1} - c_i dt = t_n + (1 - c_i) dt.
        offsets = sorted({1.0 - c for c in tableau.c})
        column = [offsets.index(1.0 - c) for c in tableau.c]
        weights, biases = net.stage_weights(params, offsets)
        sample_shape = adj.shape[:-2]
        width, depth = net.width, net.depth
        cot_w = adj.new_zeros((*sample_shape, depth, len(offsets), width, width))
        cot_b = adj.new_zeros((*sample_shape, depth, len(offsets), width))
        for n in reversed(range(depth)):
            h_end = states[n + 1]
            h_slopes: list[Tensor] = []
            a_slopes: list[Tensor] = []
            for i in range(tableau.stages):
                h_stage, a_stage = h_end, adj
                for j, a_ij in enumerate(tableau.a[i]):
                    if a_ij != 0.0:
                        h_stage = h_stage - (dt * a_ij) * h_slopes[j]
                        a_stage = a_stage + (dt * a_ij) * a_slopes[j]
                m = column[i]
                f, jta, g_w, g_b = _field_and_vjp(net, h_stage, weights[..., n, m, :, :],
                                                  biases[..., n, m, :], a_stage)
                h_slopes.append(f)
                a_slopes.append(jta)
                if tableau.b[i] != 0.0:
                    cot_w[..., n, m, :, :] += (dt * tableau.b[i]) * g_w
                    cot_b[..., n, m, :] += (dt * tableau.b[i]) * g_b
            adj = adj + dt * sum(b_i * k for b_i, k in zip(tableau.b, a_slopes, strict=True)
                                 if b_i != 0.0)

        phi = net.stage_basis(offsets).to(adj.dtype)
        if net.rank is None:
            grads["W_coef"] = torch.einsum("nmk,...nmij->...kij", phi, cot_w)
        else:  # W = U V^T: the cotangent G of W gives G V for U and G^T U for V
            left, right = net.stage_factors(params, offsets)
            grads["U_coef"] = torch.einsum("nmk,...nmir->...kir", phi, cot_w @ right)
            grads["V_coef"] = torch.einsum("nmk,...nmjr->...kjr", phi,
                                           cot_w.transpose(-1, -2) @ left)
        grads["b_coef"] = torch.einsum("nmk,...nmi->...ki", phi, cot_b)
        x = x.to(adj.dtype)
        grads["input_weight"] = torch.einsum("...nw,ni->...wi", adj, x)
        grads["input_bias"] = adj.sum(-2)
    return {name: grads[name] for name in net.param_shapes}


# ---------------------------------------------------------------------------- Jacobian spectra
class Stiffness(NamedTuple):
    """Spectra of the vector field's Jacobian along trajectories (see :func:`stiffness`).

    Attributes
    ----------
    eigenvalues : complex tensor (*S, N, L, width)
        Eigenvalues of J_n = diag(act'(W_n h_n + b_n)) W_n at grid step n for input i, sorted by
        real part, then imaginary part.
    ratio : tensor (*S, N, L)
        Stiffness ratio max |Re lambda| / min |Re lambda| (inf if some Re lambda is 0). A
        saturated unit (act' near 0) contributes an eigenvalue near 0, which alone can make the
        ratio huge; read it together with ``euler_stability``.
    euler_stability : tensor (*S, N, L)
        dt * max |lambda|, the step size relative to the fastest mode; explicit Euler needs it
        below 2 (for real negative eigenvalues) to be stable.
    amplification : tensor (*S, N, L)
        max |1 + dt lambda|: the linearized Euler step grows some perturbation if above 1.
    """

    eigenvalues: Tensor
    ratio: Tensor
    euler_stability: Tensor
    amplification: Tensor


def _trajectory_jacobian_parts(net: ResNet, params: Mapping[str, Tensor], x: Tensor
                               ) -> tuple[Tensor, Tensor]:
    """act'(W_n h_n + b_n) of shape (*S, N, L, width) and W_n of shape (*S, L, width, width).

    h_n is the network's own trajectory (its integrator) and W_n, b_n = W(t_n), b(t_n).
    """
    states = torch.stack(net.hidden_states(params, x)[:-1], dim=-2)  # (*S, N, L, width)
    weights, biases = net.layer_weights(params)
    z = torch.einsum("...lij,...nlj->...nli", weights, states) + biases.unsqueeze(-3)
    return activation_derivative(net.activation, z), weights


def _sort_complex(values: Tensor) -> Tensor:
    order = torch.sort(values.imag, dim=-1, stable=True).indices
    values = torch.gather(values, -1, order)
    order = torch.sort(values.real, dim=-1, stable=True).indices
    return torch.gather(values, -1, order)


def stiffness(net: ResNet, params: Mapping[str, Tensor], x: Tensor) -> Stiffness:
    """Eigenvalues of the vector field's Jacobian along each input's trajectory, per grid step.

    At step n the Jacobian of f(t, h) = act(W(t) h + b(t)) at (t_n, h_n) is
    J_n = diag(act'(W(t_n) h_n + b(t_n))) W(t_n), with h_n the network's trajectory.

    Parameters
    ----------
    net : ResNet
    params : mapping site -> tensor (*S, *site_shape)
        With posterior draws in S, every result is a distribution over draws.
    x : tensor (N, in_dim)

    Returns
    -------
    :class:`Stiffness` with ``eigenvalues`` (*S, N, L, width) complex and ``ratio``,
    ``euler_stability``, ``amplification`` each (*S, N, L). No gradients are tracked.
    """
    net = _check_net(net)
    with torch.no_grad():
        params = {k: v.detach() for k, v in _net_params(net, params).items()}
        slopes, weights = _trajectory_jacobian_parts(net, params, x)
        spectra = []
        for n in range(net.depth):  # one step at a time keeps the (..., width, width) batch small
            jac = slopes[..., n, :].unsqueeze(-1) * weights[..., n, :, :].unsqueeze(-3)
            spectra.append(_sort_complex(torch.linalg.eigvals(jac)))
        eig = torch.stack(spectra, dim=-2)
        real = eig.real.abs()
        return Stiffness(
            eigenvalues=eig,
            ratio=real.amax(-1) / real.amin(-1),
            euler_stability=net.dt * eig.abs().amax(-1),
            amplification=(1.0 + net.dt * eig).abs().amax(-1),
        )


def jacobian_penalty(net: ResNet, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Differentiable Jacobian regularizer: the mean over inputs of int_0^T ||J(t)||_F^2 dt.

    Computed as the Riemann sum on the network's grid,

        penalty = (1 / N) sum_i sum_n dt ||J_n(x_i)||_F^2,
        ||J_n||_F^2 = sum_jk act'(W_n h_n + b_n)_j^2 (W_n)_jk^2,

    with h_n the trajectory of input x_i (the network's integrator) and W_n, b_n = W(t_n), b(t_n).
    No autograd Jacobian is formed: the cost is about one forward pass. The value is a property
    of the continuous vector field (it converges as depth grows, so a weight chosen at one depth
    carries over to another) and is zero exactly when J vanishes along the trajectories.
    Penalizing it favours smooth, non-stiff dynamics (Finlay et al. 2020, "How to train your
    neural ODE").

    Contract for training loops: add ``weight * jacobian_penalty(net, params, x_batch)`` to a
    loss that is minimized; it is differentiable in every parameter site (through W_n, b_n, the
    input layer and the trajectory), and batched, so an ensemble's members each get their own.

    Parameters
    ----------
    net : ResNet
    params : mapping site -> tensor (*S, *site_shape)
    x : tensor (N, in_dim)

    Returns
    -------
    Tensor (*S,), non-negative.
    """
    net = _check_net(net)
    slopes, weights = _trajectory_jacobian_parts(net, _net_params(net, params), x)
    frob = torch.einsum("...nlj,...ljk->...nl", slopes**2, weights**2)  # (*S, N, L)
    return net.dt * frob.sum(-1).mean(-1)


# ---------------------------------------------------------------------------- stability
# Bytes of the larger of one layer's Jacobians (with their eigen-decomposition workspace) and
# the trajectories, for one chunk of draws in :func:`stability`: the chunk size follows from it.
_STABILITY_CHUNK_BYTES = 1 << 24


def stability_polynomial(scheme: str) -> tuple[float, ...]:
    """Coefficients (r_0, ..., r_s) of the stability function R(z) = sum_j r_j z^j of a scheme.

    One step of an explicit Runge-Kutta scheme on the linear test equation h' = lambda h
    multiplies h by R(dt lambda). For an explicit tableau (A strictly lower triangular, so
    nilpotent) R(z) = 1 + z b^T (I - z A)^{-1} 1 = 1 + sum_{k=0}^{s-1} (b^T A^k 1) z^(k+1):
    ``(1, 1)`` for Euler, ``(1, 1, 1/2)`` for midpoint and the degree-4 Taylor polynomial of
    e^z for rk4.

    Parameters
    ----------
    scheme : {'euler', 'midpoint', 'rk4'}
        A name of :data:`~bayesresnet.resnet.INTEGRATORS`.

    Returns
    -------
    tuple of s + 1 floats, lowest degree first.
    """
    if not isinstance(scheme, str) or scheme not in INTEGRATORS:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {sorted(INTEGRATORS)}")
    tableau = INTEGRATORS[scheme]
    stages = tableau.stages
    a = torch.zeros(stages, stages, dtype=torch.float64)
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    b = torch.tensor(tableau.b, dtype=torch.float64)
    power = torch.ones(stages, dtype=torch.float64)  # A^k 1
    coefficients = [1.0]
    for _ in range(stages):
        coefficients.append(float(b @ power))
        power = a @ power
    return tuple(coefficients)


def amplification_factor(z: Tensor, scheme: str = "euler") -> Tensor:
    """The amplification ``|R(z)|``, z = dt lambda: how much one step of ``scheme`` scales a mode.

    Parameters
    ----------
    z : complex (or real) tensor of any shape
        Eigenvalues times the step size.
    scheme : {'euler', 'midpoint', 'rk4'}
        See :func:`stability_polynomial`; for Euler ``|R(z)| = |1 + z|``.

    Returns
    -------
    Real tensor of the shape of ``z``; the step is (linearly) stable where it is <= 1.
    """
    coefficients = stability_polynomial(scheme)
    value = torch.full_like(z, coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):  # Horner
        value = value * z + coefficient
    return value.abs()


def _check_stability_options(scheme: str, level: Any, tolerance: Any) -> None:
    stability_polynomial(scheme)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number strictly between 0 and 1, got {level!r}")
    if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
            or not math.isfinite(tolerance) or tolerance < 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")


def stability(net: ResNet, params: Mapping[str, Tensor], x: Tensor, *,
              sample_dims: Sequence[str] = ("draw",), scheme: str = "euler",
              level: float = 0.95, tolerance: float = 1e-9, eigenvalues: bool = True
              ) -> xr.Dataset:
    """Stability of the network's steps under parameter uncertainty, from parameter draws.

    For every draw s, input x_i and grid step n, the eigenvalues lambda of the Jacobian
    J_n = diag(act'(W(t_n) h_n + b(t_n))) W(t_n) of the vector field at the trajectory's state
    h_n (as in :func:`stiffness`). Step n of input i is stable when the linearized step does
    not grow any mode: |R(dt lambda)| <= 1 + ``tolerance`` for all eigenvalues, with R the
    stability function of ``scheme`` (|1 + dt lambda| for explicit Euler, the ResNet). The
    draws are the samples of the distribution, so each probability is the fraction of draws:

    * ``layer_stability_probability[n]``: of draws whose step n is stable for every input;
    * ``stability_probability``: of draws for which every step at every input is stable.

    The stiffness ratio of a draw is max |Re lambda| / min |Re lambda| over all its steps,
    inputs and eigenvalues (inf when some Re lambda is 0, NaN when all are), summarized by the
    median and the central ``level`` credible interval over draws.

    Parameters
    ----------
    net : ResNet
    params : mapping site -> tensor (*S, *site_shape)
        Parameter draws; S has one dim per name in ``sample_dims``.
    x : tensor (N, in_dim)
        Inputs whose trajectories are followed (the network's units: standardized for a fitted
        model, see :func:`posterior_stability`).
    sample_dims : sequence of str
        Names of the dims of S in the result, e.g. ``("chain", "draw")``.
    scheme : {'euler', 'midpoint', 'rk4'}
        The explicit scheme whose stability is judged (default Euler, whatever the network's
        own integrator; the Jacobians are taken along the network's own trajectory).
    level : float
        Mass of the central credible interval of the stiffness ratio.
    tolerance : float
        Slack on |R(dt lambda)| <= 1 for rounding: a step exactly on the boundary (e.g.
        dt lambda = -2 for Euler) counts as stable.
    eigenvalues : bool
        Keep the eigenvalues (16 bytes per draw, input, step and hidden unit); without them the
        result holds the summaries only.

    Returns
    -------
    xarray.Dataset
        Computed in chunks of draws (about 16 MB of Jacobians or trajectories at a time); the
        result holds ``N L`` amplifications per draw, and ``N L width`` eigenvalues with
        ``eigenvalues=True``. A draw whose trajectory is not finite has NaN eigenvalues and
        counts as unstable.

        Dims: the sample dims, ``point`` (N inputs), ``layer`` (the depth grid steps, with the
        coordinate ``time`` t_n = n dt), ``eigen`` (width; eigenvalues sorted by real part,
        then imaginary part) and ``quantile`` (``(1 - level) / 2``, 0.5,
        ``(1 + level) / 2``). Variables:

        * ``eigenvalues`` (*S, point, layer, eigen), complex: lambda (only with
          ``eigenvalues=True``);
        * ``amplification`` (*S, point, layer): max over eigenvalues of |R(dt lambda)|;
        * ``spectral_abscissa`` (*S, point, layer): max Re lambda. Where it is positive the
          ODE itself grows a perturbation, and no step size makes an Euler step stable in the
          sense above (|1 + dt lambda| > 1 for every dt > 0): an unstable step there says the
          learned dynamics expand, not that dt is too large;
        * ``step_stable`` (*S, point, layer), bool;
        * ``layer_stable`` (*S, layer), bool: step n stable for every input;
        * ``stable`` (*S,), bool: every step stable for every input;
        * ``stiffness_ratio`` (*S,);
        * ``layer_stability_probability`` (layer,), ``stability_probability`` (scalar);
        * ``layer_stability_probability_mcse`` (layer,), ``stability_probability_mcse``
          (scalar): their Monte Carlo standard errors, ``sqrt(p (1 - p) / ESS)`` with the
          effective sample size of the 0/1 indicators. With sample dims ``("chain", "draw")``
          and at least 4 draws per chain the ESS is ArviZ's (``method="mean"``, over all
          chains, so chains that disagree make it small); otherwise the draws are taken as
          independent (ESS = their number). It is 0 where every draw agrees (p = 0 or 1),
          which says nothing about how rare the other outcome is: with M independent draws,
          its probability is below 3 / M at 95% confidence;
        * ``stiffness_ratio_interval`` (quantile,): empirical quantiles of the draws'
          ratios (each a draw's value, so infinite ratios stay well defined).

        Attributes: ``dt``, ``scheme``, ``tolerance``, ``level``, ``integrator`` (the
        network's own), ``draws`` (the number of draws).

    Raises
    ------
    ValueError
        For a network that is not a ResNet, parameters of the wrong shapes, a ``sample_dims``
        whose length is not that of S, inputs of the wrong shape, or invalid options.
    """
    import xarray as xr

    net = _check_net(net)
    _check_stability_options(scheme, level, tolerance)
    params = _net_params(net, params)
    sample_shape = tuple(net.sample_shape(params))
    sample_dims = tuple(sample_dims)
    if len(sample_dims) != len(sample_shape) or not all(isinstance(d, str) for d in sample_dims):
        raise ValueError(f"sample_dims must name each of the {len(sample_shape)} sample dims of "
                         f"params (shape {sample_shape}), got {sample_dims!r}")
    if len(set(sample_dims) | {"point", "layer", "eigen", "quantile"}) != len(sample_dims) + 4:
        raise ValueError(f"sample_dims {sample_dims!r} must be distinct and not 'point', "
                         "'layer', 'eigen' or 'quantile'")
    net._check_input(x)
    total = math.prod(sample_shape)
    if total < 1:
        raise ValueError("params hold no draws")
    flat = {k: v.detach().reshape(total, *net.param_shapes[k]) for k, v in params.items()}
    points, width, depth = x.shape[0], net.width, net.depth
    per_draw = 16 * points * width * max(width, depth)
    chunk = max(1, min(total, _STABILITY_CHUNK_BYTES // per_draw))
    spectra, amplification, abscissa, ratio = [], [], [], []
    for start in range(0, total, chunk):
        eig = stiffness(net, {k: v[start:start + chunk] for k, v in flat.items()}, x).eigenvalues
        amplification.append(amplification_factor(net.dt * eig, scheme).amax(-1))
        abscissa.append(eig.real.amax(-1))
        real = eig.real.abs().flatten(1)  # (chunk, point * layer * eigen)
        ratio.append(real.amax(-1) / real.amin(-1))
        if eigenvalues:
            spectra.append(eig)
    amp = torch.cat(amplification).cpu().numpy()  # (M, point, layer)
    ratios = torch.cat(ratio).cpu().numpy()
    step_stable = amp <= 1.0 + tolerance
    layer_stable = step_stable.all(axis=1)  # (M, layer)
    stable = layer_stable.all(axis=1)
    quantiles = np.array([(1.0 - level) / 2.0, 0.5, (1.0 + level) / 2.0])

    def shaped(array: np.ndarray) -> np.ndarray:
        return array.reshape(*sample_shape, *array.shape[1:])

    data_vars: dict[str, Any] = {}
    if eigenvalues:
        data_vars["eigenvalues"] = ((*sample_dims, "point", "layer", "eigen"),
                                    shaped(torch.cat(spectra).cpu().numpy()))
    data_vars.update({
        "amplification": ((*sample_dims, "point", "layer"), shaped(amp)),
        "spectral_abscissa": ((*sample_dims, "point", "layer"),
                              shaped(torch.cat(abscissa).cpu().numpy())),
        "step_stable": ((*sample_dims, "point", "layer"), shaped(step_stable)),
        "layer_stable": ((*sample_dims, "layer"), shaped(layer_stable)),
        "stable": (sample_dims, shaped(stable)),
        "stiffness_ratio": (sample_dims, shaped(ratios)),
        "layer_stability_probability": (("layer",), layer_stable.mean(axis=0)),
        "stability_probability": ((), float(stable.mean())),
        "layer_stability_probability_mcse": (("layer",), _fraction_mcse(
            shaped(layer_stable), sample_dims)),
        "stability_probability_mcse": ((), float(_fraction_mcse(shaped(stable),
                                                                sample_dims))),
        "stiffness_ratio_interval": (("quantile",),
                                     np.quantile(ratios, quantiles, method="inverted_cdf")),
    })
    coords: dict[str, Any] = {dim: np.arange(size) for dim, size in
                              zip(sample_dims, sample_shape, strict=True)}
    coords.update({"point": np.arange(points), "layer": np.arange(depth),
                   "time": ("layer", net.layer_times().numpy()),
                   "eigen": np.arange(width), "quantile": quantiles})
    attrs = {"dt": net.dt, "scheme": scheme, "tolerance": float(tolerance),
             "level": float(level), "integrator": net.integrator, "draws": total}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _fraction_mcse(indicator: np.ndarray, sample_dims: Sequence[str]) -> np.ndarray:
    """Monte Carlo standard error of the mean over the sample dims of 0/1 ``indicator``
    (*S, *rest): ``sqrt(p (1 - p) / ESS)``, shape ``rest`` (see :func:`stability`)."""
    from .arviz_compat import draws_dataset, ess

    rest = indicator.shape[len(sample_dims):]
    flat = indicator.reshape(-1, *rest).astype(np.float64)
    p = flat.mean(axis=0)
    size = np.full(rest, float(flat.shape[0]))
    if tuple(sample_dims) == ("chain", "draw") and indicator.shape[1] >= 4:
        varying = (p > 0) & (p < 1)
        if varying.any():
            values = ess(draws_dataset({"v": indicator.astype(np.float64)}), "mean")["v"]
            size = np.where(varying, np.asarray(values, dtype=np.float64), size)
    return np.sqrt(p * (1.0 - p) / size)


def posterior_stability(posterior: Posterior, x: Any, *, thin: int = 1, scheme: str = "euler",
                        level: float = 0.95, tolerance: float = 1e-9, eigenvalues: bool = True
                        ) -> xr.Dataset:
    """Posterior distribution of the layer Jacobians' spectra and of the steps' stability.

    :func:`stability` at the posterior's draws (every ``thin``-th draw of each chain), along the
    trajectories of the inputs ``x`` given in original units (they are standardized with the
    posterior's scaler, as the network saw its training data). ``Posterior.stability`` calls
    this.

    Parameters
    ----------
    posterior : Posterior
        A run whose network is a :class:`~bayesresnet.ResNet` (an MLP has no ODE view).
    x : array (N, in_dim)
        Inputs in original units.
    thin : int
        Keep draws 0, thin, 2 thin, ... of each chain (the cost is linear in the draws).
    scheme, level, tolerance, eigenvalues
        See :func:`stability`.

    Returns
    -------
    xarray.Dataset
        The dataset of :func:`stability` with sample dims ``chain`` and ``draw`` (coordinates:
        the chain and the kept draws' indices in it), the inputs as the variable ``x``
        (point, input) in original units, and the attributes ``method`` and ``thin``. The
        probabilities are fractions of all kept draws of all chains.

    Raises
    ------
    ValueError
        For a posterior whose network is not a ResNet, invalid inputs or options.
    """
    posterior = check_posterior(posterior)
    model = posterior.model
    if not isinstance(model.net, ResNet):
        raise ValueError(f"stability needs a ResNet (the ODE view of its steps); this posterior's "
                         f"network is a {type(model.net).__name__}")
    if isinstance(thin, bool) or not isinstance(thin, (int, np.integer)) or thin < 1:
        raise ValueError(f"thin must be a positive integer, got {thin!r}")
    _check_stability_options(scheme, level, tolerance)
    x = check_inputs(x, model.in_dim)
    with torch.no_grad():
        params = model.net_params({k: v[:, ::thin] for k, v in posterior.draws.items()})
    data = stability(model.net, params, posterior.x_scaler.transform(x),
                     sample_dims=("chain", "draw"), scheme=scheme, level=level,
                     tolerance=tolerance, eigenvalues=eigenvalues)
    names = posterior.feature_names or list(range(model.in_dim))
    data = data.assign_coords(draw=np.arange(0, posterior.num_draws, thin), input=names)
    data["x"] = (("point", "input"), x.numpy())
    data.attrs.update(method=posterior.method.name, thin=int(thin))
    return data
