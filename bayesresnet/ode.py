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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .resnet import ACTIVATIONS, ResNet

__all__ = [
    "ACTIVATION_DERIVATIVES",
    "Stiffness",
    "activation_derivative",
    "adjoint_gradient",
    "backprop_gradient",
    "jacobian_penalty",
    "squared_error",
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

    plus the input and output layers (exact, they are not part of the ODE).
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
        grads["W_coef"] = torch.einsum("nmk,...nmij->...kij", phi, cot_w)
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
