"""Weight-parameterized ResNets and the MLP baseline, as pure functions of a parameter dict.

Both networks own no tensors: they describe parameter sites (``param_shapes``) and compute the
output for a dict of parameters that may carry any leading sample dimensions S, so one call
evaluates the network for every posterior draw, chain or ensemble member at once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .basis import Basis, Piecewise, basis_from_config, get_basis

__all__ = ["ACTIVATIONS", "INTEGRATORS", "MLP", "Network", "ResNet", "Tableau", "combine_basis",
           "network_from_config"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "identity": lambda z: z,
}
"""Activation functions by name (the ``activation=`` argument of the networks)."""


def combine_basis(phi: Tensor, coef: Tensor, event_dims: int) -> Tensor:
    """The basis expansion ``sum_k phi[..., k] * coef[..., k, *event]``.

    Parameters
    ----------
    phi : tensor of shape (*lead, K)
        Basis functions at the times wanted.
    coef : tensor of shape (*S, K, *event)
        Coefficients, with ``event_dims`` trailing event dimensions.
    event_dims : {1, 2}
        Number of event dimensions of ``coef`` (2 for weight matrices, 1 for biases).

    Returns
    -------
    Tensor of shape (*S, *lead, *event).
    """
    lead = phi.dim() - 1
    if not torch.compiler.is_compiling():
        times, event = "abcdefgh"[:lead], "ij"[:event_dims]
        return torch.einsum(f"{times}k,...k{event}->...{times}{event}", phi, coef)
    # Inside a compiled program the sum over K is written out as a broadcast product, which
    # inductor fuses into the kernels around it instead of calling a batched matrix product
    # forward and backward: 1-7% of an MCLMC step on the benchmark networks
    # (benchmarks/results/mclmc_step.md, way "einsum basis").
    phi = phi.reshape(*phi.shape, *([1] * event_dims))
    coef = coef.reshape(*coef.shape[:-event_dims - 1], *([1] * lead),
                        *coef.shape[-event_dims - 1:])
    return (phi * coef).sum(-event_dims - 1)


@dataclass(frozen=True)
class Tableau:
    """Butcher tableau of an explicit Runge-Kutta scheme with s stages.

    Stage i evaluates the vector field at time t_n + c[i] dt and state
    h_n + dt * sum_j a[i][j] k_j (j < i); the step is h_{n+1} = h_n + dt * sum_i b[i] k_i.

    Attributes
    ----------
    a : tuple of s tuples, row i holding the i coefficients a[i][0..i-1]
    b, c : tuple of s floats
    order : int
        Convergence order of the global error.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    @property
    def stages(self) -> int:
        return len(self.b)


INTEGRATORS: dict[str, Tableau] = {
    "euler": Tableau(a=((),), b=(1.0,), c=(0.0,), order=1),
    "midpoint": Tableau(a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5), order=2),
    "rk4": Tableau(
        a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        b=(1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0),
        c=(0.0, 0.5, 0.5, 1.0),
        order=4,
    ),
}
"""Butcher tableaus of the residual step by name (the ``integrator=`` argument of
:class:`ResNet`): explicit Euler (the ordinary ResNet), midpoint and classical Runge-Kutta 4."""


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )


class Network:
    """Common contract of :class:`ResNet` and :class:`MLP`.

    Subclasses define ``param_shapes`` and ``forward(params, x)``.
    """

    in_dim: int
    out_dim: int
    width: int
    depth: int
    activation: str

    @property
    def param_shapes(self) -> OrderedDict[str, tuple[int, ...]]:
        raise NotImplementedError

    @property
    def num_params(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(shape) for shape in self.param_shapes.values())

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def replace(self, **changes: Any) -> Network:
        """A copy with some constructor arguments changed (e.g. ``out_dim``)."""
        config = self.config()
        config.update(changes)
        return network_from_config(config)

    def _act(self, z: Tensor) -> Tensor:
        return ACTIVATIONS[self.activation](z)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, in_dim), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"x has {x.shape[-1]} features but the network expects in_dim={self.in_dim}"
            )

    def sample_shape(self, params: Mapping[str, Tensor]) -> torch.Size:
        """The leading sample dims S of a parameter dict (sites of shape ``(*S, *site_shape)``).

        Raises
        ------
        ValueError
            If a site of ``param_shapes`` is missing from ``params``.
        """
        missing = [name for name in self.param_shapes if name not in params]
        if missing:
            raise ValueError(f"params is missing sites {missing}")
        first = next(iter(self.param_shapes))
        shape = self.param_shapes[first]
        return params[first].shape[: params[first].dim() - len(shape)]

    def init_params(
        self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> dict[str, Tensor]:
        """Random initial parameters (Glorot-uniform weights, zero biases, small coefficients).

        Parameters
        ----------
        generator : torch.Generator, optional
            Source of randomness, for reproducible initializations.
        dtype : torch.dtype
            Floating dtype of the parameters.

        Returns
        -------
        dict mapping each site of ``param_shapes`` to a tensor of that shape.
        """
        params = {}
        for name, shape in self.param_shapes.items():
            if "bias" in name or name == "b_coef":
                params[name] = torch.zeros(shape, dtype=dtype)
                continue
            fan_out, fan_in = shape[-2], shape[-1]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            u = torch.rand(shape, generator=generator, dtype=dtype)
            params[name] = (2.0 * u - 1.0) * bound
        return params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class ResNet(Network):
    """A ResNet whose weights are functions of depth written in a basis.

    Input layer ``h_0 = x W_in^T + b_in``, then ``depth`` explicit Euler steps

        h_{n+1} = h_n + dt * act(W(t_n) h_n + b(t_n)),  t_n = n dt,  dt = horizon / depth,

    with ``W(t) = sum_k phi_k(t) A_k`` and ``b(t) = sum_k phi_k(t) c_k``, then an output layer
    ``y = h_L W_out^T + b_out``. With ``integrator='midpoint'`` or ``'rk4'`` the same vector field
    is integrated on the same grid with that explicit Runge-Kutta scheme instead (the ODE view);
    the parameter sites do not change.

    Parameters
    ----------
    in_dim, out_dim : int
        Number of input features and outputs.
    width : int
        Hidden state size.
    depth : int
        Number of residual steps L.
    basis : Basis or str
        Depth basis phi (see :mod:`bayesresnet.basis`), default piecewise (one matrix per layer).
    activation : {'tanh', 'relu', 'silu', 'identity'}
    horizon : float
        Final time T of the ODE.
    integrator : {'euler', 'midpoint', 'rk4'}
        Scheme for the residual steps (see :data:`INTEGRATORS`). ``'euler'`` is the ResNet.
    rank : int, optional
        Low-rank hidden weights: with ``rank=r`` (1 <= r <= width) the hidden weight is
        ``W(t) = U(t) V(t)^T`` with ``U(t) = sum_k phi_k(t) U_k`` and
        ``V(t) = sum_k phi_k(t) V_k``, each ``(width, r)``, so the depth basis carries the two
        factors instead of W. Default None: a dense W(t).

    Notes
    -----
    Parameter sites, in order: ``input_weight (width, in_dim)``, ``input_bias (width,)``,
    ``W_coef (K, width, width)``, ``b_coef (K, width)``, ``output_weight (out_dim, width)``,
    ``output_bias (out_dim,)``, where K = ``basis.size(depth)``. With ``rank=r`` the site
    ``W_coef`` is replaced by ``U_coef (K, width, r)`` and ``V_coef (K, width, r)`` (in that
    order), so the hidden weights have ``2 K width r`` parameters instead of ``K width^2``.
    W(t) is then a product of two basis expansions: for a polynomial basis of degree d its
    entries are polynomials of degree 2d in t, and for the Piecewise basis each layer's W_n is
    ``U_n V_n^T``. The factors are identifiable only up to ``U R``, ``V R^{-T}`` for an
    invertible r x r matrix R (one per basis function for the Piecewise basis): read the
    posterior of W(t) or of the network's outputs, not of ``U_coef`` and ``V_coef``.
    The forward pass forms W(t) = U(t) V(t)^T explicitly (width^2 r work per step, no work per
    input), so every path of the network (Euler, Runge-Kutta stages, the ODE tools) sees the
    same dense W(t).

    Higher-order stages evaluate W and b at t_n + c dt (:meth:`stage_weights`). Step n integrates
    the ODE on [t_n, t_{n+1}] with the weights of that interval, so for the Piecewise basis every
    stage of step n, including one at t_{n+1}, uses layer n's weights: the ODE of a
    piecewise-constant W is integrated layer by layer.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int,
        depth: int,
        basis: Basis | str = "piecewise",
        activation: str = "tanh",
        horizon: float = 1.0,
        integrator: str = "euler",
        rank: int | None = None,
    ) -> None:
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("width", width),
                            ("depth", depth)):
            _check_positive_int(name, value)
        _check_activation(activation)
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool)
                                 or not 1 <= rank <= width):
            raise ValueError(f"rank must be None (dense hidden weights) or an integer from 1 to "
                             f"width={width}, got {rank!r}")
        if not (isinstance(horizon, (int, float)) and math.isfinite(horizon) and horizon > 0):
            raise ValueError(f"horizon must be a positive finite number, got {horizon!r}")
        if not isinstance(integrator, str) or integrator not in INTEGRATORS:
            raise ValueError(
                f"unknown integrator {integrator!r}; expected one of {sorted(INTEGRATORS)}"
            )
        self.integrator = integrator
        self.rank = rank
        self.in_dim, self.out_dim, self.width, self.depth = in_dim, out_dim, width, depth
        self.basis = get_basis(basis)
        self.activation = activation
        self.horizon = float(horizon)
        self.num_basis = self.basis.size(depth)
        self._grid_cache: dict[tuple[Any, ...], Tensor] = {}

    @property
    def dt(self) -> float:
        """Step size horizon / depth."""
        return self.horizon / self.depth

    @property
    def param_shapes(self) -> OrderedDict[str, tuple[int, ...]]:
        w, k = self.width, self.num_basis
        hidden: dict[str, tuple[int, ...]] = (
            {"W_coef": (k, w, w)} if self.rank is None
            else {"U_coef": (k, w, self.rank), "V_coef": (k, w, self.rank)})
        return OrderedDict(
            input_weight=(w, self.in_dim),
            input_bias=(w,),
            **hidden,
            b_coef=(k, w),
            output_weight=(self.out_dim, w),
            output_bias=(self.out_dim,),
        )

    def init_params(
        self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> dict[str, Tensor]:
        """Random initial parameters; see :meth:`Network.init_params`.

        With ``rank=r`` the factors' uniform draws are scaled so that each entry of
        W = U V^T has the Glorot variance 1 / width of a dense W: each factor entry has
        variance 1 / sqrt(r width).
        """
        params = super().init_params(generator, dtype)
        if self.rank is not None:
            w, r = self.width, self.rank
            drawn_bound = math.sqrt(6.0 / (w + r))  # Glorot bound of a (width, r) matrix
            bound = math.sqrt(3.0) * (r * w) ** -0.25  # uniform(-b, b) has variance b^2 / 3
            for name in ("U_coef", "V_coef"):
                params[name] = params[name] * (bound / drawn_bound)
        return params

    @property
    def tableau(self) -> Tableau:
        """Butcher tableau of the integrator."""
        return INTEGRATORS[self.integrator]

    def layer_times(self) -> Tensor:
        """The step grid t_n = n dt, n = 0..depth-1, shape (depth,)."""
        return torch.arange(self.depth, dtype=torch.float64) * self.dt

    def layer_weights(self, params: Mapping[str, Tensor], times: Tensor | None = None
                      ) -> tuple[Tensor, Tensor]:
        """W(t) and b(t) at ``times`` (default: the Euler grid).

        Returns
        -------
        W : tensor (*S, M, width, width)
            ``U(t) V(t)^T`` for a low-rank network.
        b : tensor (*S, M, width)
        """
        phi = self._time_basis(params, times)
        return self._expand_weights(phi, params), combine_basis(phi, params["b_coef"], 1)

    def layer_factors(self, params: Mapping[str, Tensor], times: Tensor | None = None
                      ) -> tuple[Tensor, Tensor]:
        """The factors U(t), V(t) of a low-rank W(t) = U(t) V(t)^T at ``times`` (default: the
        Euler grid).

        Returns
        -------
        U, V : tensors (*S, M, width, rank)

        Raises
        ------
        ValueError
            If the network has dense hidden weights (``rank=None``).
        """
        self._check_low_rank()
        return self._expand_factors(self._time_basis(params, times), params)

    def _time_basis(self, params: Mapping[str, Tensor], times: Tensor | None) -> Tensor:
        """phi at ``times`` (the cached Euler grid by default), in the parameters' dtype and on
        their device."""
        dtype, device = params["b_coef"].dtype, params["b_coef"].device
        if times is None:
            return self._grid_basis(dtype, device)
        return self.basis.matrix(times, self.depth, self.horizon, dtype=dtype).to(device)

    def _check_low_rank(self) -> None:
        if self.rank is None:
            raise ValueError("this ResNet has dense hidden weights (rank=None): it has no "
                             "factors U, V")

    def _expand_factors(self, phi: Tensor, params: Mapping[str, Tensor]
                        ) -> tuple[Tensor, Tensor]:
        """U and V from basis values ``phi`` of shape (*lead, K): (*S, *lead, width, rank)."""
        return combine_basis(phi, params["U_coef"], 2), combine_basis(phi, params["V_coef"], 2)

    def _expand_weights(self, phi: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """W from basis values ``phi`` of shape (*lead, K): (*S, *lead, width, width)."""
        if self.rank is None:
            return combine_basis(phi, params["W_coef"], 2)
        left, right = self._expand_factors(phi, params)
        return left @ right.transpose(-1, -2)

    def _grid_basis(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
        """The basis on the Euler grid, (depth, num_basis); computed once per dtype and device
        because every forward needs it and building it (with its input checks) costs as much as
        a layer."""
        key = (dtype, torch.device(device), self.depth, self.horizon, id(self.basis))
        if key not in self._grid_cache:
            self._grid_cache[key] = self.basis.matrix(self.layer_times(), self.depth,
                                                      self.horizon, dtype=dtype).to(device)
        return self._grid_cache[key]

    def stage_basis(self, offsets: Tensor | list[float]) -> Tensor:
        """Basis functions at the stage times t_n + c dt of every step n.

        Parameters
        ----------
        offsets : tensor (M,) or list of floats in [0, 1]
            Stage offsets c, as fractions of a step.

        Returns
        -------
        Tensor (depth, M, K) with entry [n, m, k] = phi_k(t_n + c_m dt), where phi is the basis
        restricted to step n's interval [t_n, t_{n+1}]: for the Piecewise basis that is layer n's
        indicator for every offset (the left limit at t_{n+1}).
        """
        c = torch.as_tensor(offsets, dtype=torch.float64).reshape(-1)
        if not torch.isfinite(c).all() or (c < 0).any() or (c > 1).any():
            raise ValueError(f"stage offsets must lie in [0, 1], got {c.tolist()}")
        if isinstance(self.basis, Piecewise):
            eye = torch.eye(self.depth, dtype=torch.float64)
            return eye.unsqueeze(1).expand(self.depth, c.numel(), self.depth)
        steps = torch.arange(self.depth, dtype=torch.float64).unsqueeze(-1)
        times = ((steps + c) * self.dt).clamp(max=self.horizon)
        phi = self.basis.matrix(times.reshape(-1), self.depth, self.horizon)
        return phi.reshape(self.depth, c.numel(), -1)

    def stage_weights(self, params: Mapping[str, Tensor], offsets: Tensor | list[float]
                      ) -> tuple[Tensor, Tensor]:
        """W and b at the stage times t_n + c dt of every step (see :meth:`stage_basis`).

        Returns
        -------
        W : tensor (*S, depth, M, width, width)
        b : tensor (*S, depth, M, width)
        """
        phi = self.stage_basis(offsets).to(dtype=params["b_coef"].dtype,
                                           device=params["b_coef"].device)
        return self._expand_weights(phi, params), combine_basis(phi, params["b_coef"], 1)

    def stage_factors(self, params: Mapping[str, Tensor], offsets: Tensor | list[float]
                      ) -> tuple[Tensor, Tensor]:
        """U and V of a low-rank network at the stage times (see :meth:`stage_basis`).

        Returns
        -------
        U, V : tensors (*S, depth, M, width, rank)

        Raises
        ------
        ValueError
            If the network has dense hidden weights (``rank=None``).
        """
        self._check_low_rank()
        return self._expand_factors(self.stage_basis(offsets).to(
            dtype=params["b_coef"].dtype, device=params["b_coef"].device), params)

    def vector_field(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """act(W h + b) for hidden states h (*S, N, width), W (*S, width, width), b (*S, width)."""
        return self._field(h, weight.transpose(-1, -2), bias.unsqueeze(-2))

    def _field(self, h: Tensor, weight_t: Tensor, bias_row: Tensor) -> Tensor:
        """act(h W^T + b) from W^T (*S, width, width) and b as a row (*S, 1, width): one fused
        batched multiply-add where the shapes allow it."""
        if h.dim() == 3 and weight_t.dim() == 3:
            return self._act(torch.baddbmm(bias_row, h, weight_t))
        return self._act(h @ weight_t + bias_row)

    def embed(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Input layer: h_0 of shape (*S, N, width)."""
        return x @ params["input_weight"].transpose(-1, -2) + params["input_bias"].unsqueeze(-2)

    def readout(self, params: Mapping[str, Tensor], h: Tensor) -> Tensor:
        """Output layer: (*S, N, out_dim)."""
        return h @ params["output_weight"].transpose(-1, -2) + params["output_bias"].unsqueeze(-2)

    def hidden_states(self, params: Mapping[str, Tensor], x: Tensor) -> list[Tensor]:
        """The trajectory h_0, ..., h_L, each of shape (*S, N, width)."""
        self._check_input(x)
        self.sample_shape(params)
        h = self.embed(params, x.to(params["input_weight"].dtype))
        if self.integrator != "euler":
            return self._runge_kutta_states(params, h)
        weights, biases = self.layer_weights(params)
        # One unbind instead of a slice per layer, and fused multiply-adds: every op here is a
        # node of the autograd graph that NUTS differentiates at each leapfrog step, and on
        # small networks the per-node overhead, not the arithmetic, sets the cost.
        layer_weights = weights.transpose(-1, -2).unbind(-3)
        layer_biases = biases.unsqueeze(-2).unbind(-3)
        states = [h]
        for weight_t, bias_row in zip(layer_weights, layer_biases, strict=True):
            h = torch.add(h, self._field(h, weight_t, bias_row), alpha=self.dt)
            states.append(h)
        return states

    def _runge_kutta_states(self, params: Mapping[str, Tensor], h: Tensor) -> list[Tensor]:
        tableau, dt = self.tableau, self.dt
        offsets = sorted(set(tableau.c))  # rk4 evaluates W(t_n + dt/2) once for two stages
        column = [offsets.index(c) for c in tableau.c]
        weights, biases = self.stage_weights(params, offsets)
        states = [h]
        for n in range(self.depth):
            slopes: list[Tensor] = []
            for i in range(tableau.stages):
                h_stage = h
                for j, a_ij in enumerate(tableau.a[i]):
                    if a_ij != 0.0:
                        h_stage = h_stage + (dt * a_ij) * slopes[j]
                m = column[i]
                slopes.append(self.vector_field(h_stage, weights[..., n, m, :, :],
                                                biases[..., n, m, :]))
            h = h + dt * sum(b_i * k for b_i, k in zip(tableau.b, slopes, strict=True)
                             if b_i != 0.0)
            states.append(h)
        return states

    def forward(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Network output for every leading sample index of ``params``.

        Parameters
        ----------
        params : mapping of site name to tensor of shape (*S, *site_shape)
        x : tensor of shape (N, in_dim)

        Returns
        -------
        Tensor of shape (*S, N, out_dim).
        """
        if self.integrator != "euler":
            return self.readout(params, self.hidden_states(params, x)[-1])
        self._check_input(x)
        self.sample_shape(params)
        return self._euler_output(params, x.to(params["input_weight"].dtype))

    __call__ = forward

    def _euler_output(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """The Euler network's output, without keeping its trajectory; (*S, N, out_dim).

        Equal to ``readout(hidden_states(...)[-1])`` up to rounding, and the path every sampler
        and predictive takes, so it is written for speed on CPUs:

        * The hidden state is held feature-major, (*S, width, N), so each step is the batched
          product W h with the data axis as the long, contiguous side. For the small widths of
          these networks PyTorch's CPU kernels run that product, and its backward, about twice
          as fast as h W^T on (*S, N, width).
        * For tanh, each step uses tanh(p) = 2 sigmoid(2p) - 1: PyTorch's float64 ``sigmoid``
          is several times cheaper than its ``tanh``. The state carried is g_n = h_n + n dt, so
          the -dt of every step moves into the biases instead of costing a pass over the states:
          g_{n+1} = g_n + 2 dt sigmoid(2 W_n g_n + 2 (b_n - n dt W_n 1)) and
          y = W_out g_L + b_out - L dt W_out 1.
        """
        weights, biases = self.layer_weights(params)  # (*S, L, width, width), (*S, L, width)
        h = params["input_weight"] @ x.T + params["input_bias"].unsqueeze(-1)
        out_weight, out_bias = params["output_weight"], params["output_bias"]
        if self.activation == "tanh":
            shift = self._step_offsets(h.dtype, h.device)  # (L, 1): n dt
            biases = 2.0 * (biases - shift * weights.sum(-1))
            weights = 2.0 * weights
            out_bias = out_bias - self.horizon * out_weight.sum(-1)
            act, step = torch.sigmoid, 2.0 * self.dt
        else:
            act, step = self._act, self.dt
        batched = h.dim() == 3 and weights.dim() == 4
        layers = zip(weights.unbind(-3), biases.unsqueeze(-1).unbind(-3), strict=True)
        if torch.is_grad_enabled():
            for weight, bias in layers:
                pre = torch.baddbmm(bias, weight, h) if batched else weight @ h + bias
                h = torch.add(h, act(pre), alpha=step)
        else:  # predictive passes keep no graph: one buffer, h updated in place
            pre = torch.empty_like(h)
            for weight, bias in layers:
                if batched:
                    torch.baddbmm(bias, weight, h, out=pre)
                else:
                    torch.matmul(weight, h, out=pre).add_(bias)
                h.add_(torch.sigmoid(pre, out=pre) if act is torch.sigmoid else act(pre),
                       alpha=step)
        return (out_weight @ h + out_bias.unsqueeze(-1)).transpose(-1, -2)

    def _step_offsets(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
        """n dt for n = 0..depth-1 as a column (depth, 1), cached per dtype and device."""
        key = ("offsets", dtype, torch.device(device))
        if key not in self._grid_cache:
            self._grid_cache[key] = self.layer_times().to(dtype=dtype, device=device).unsqueeze(-1)
        return self._grid_cache[key]

    def config(self) -> dict[str, Any]:
        return {
            "name": "ResNet",
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "width": self.width,
            "depth": self.depth,
            "basis": self.basis.config(),
            "activation": self.activation,
            "horizon": self.horizon,
            "integrator": self.integrator,
            "rank": self.rank,
        }


class MLP(Network):
    """Plain feed-forward baseline: input layer, ``depth`` hidden layers h <- act(W h + b), output.

    Parameter sites: ``input_weight (width, in_dim)``, ``input_bias (width,)``,
    ``hidden_weight (depth, width, width)``, ``hidden_bias (depth, width)``,
    ``output_weight (out_dim, width)``, ``output_bias (out_dim,)``. The input layer is followed by
    the activation, so depth counts the hidden-to-hidden layers.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int, depth: int,
                 activation: str = "tanh") -> None:
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("width", width),
                            ("depth", depth)):
            _check_positive_int(name, value)
        _check_activation(activation)
        self.in_dim, self.out_dim, self.width, self.depth = in_dim, out_dim, width, depth
        self.activation = activation

    @property
    def param_shapes(self) -> OrderedDict[str, tuple[int, ...]]:
        w = self.width
        return OrderedDict(
            input_weight=(w, self.in_dim),
            input_bias=(w,),
            hidden_weight=(self.depth, w, w),
            hidden_bias=(self.depth, w),
            output_weight=(self.out_dim, w),
            output_bias=(self.out_dim,),
        )

    def forward(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Network output, shape (*S, N, out_dim); see :meth:`ResNet.forward`."""
        self._check_input(x)
        self.sample_shape(params)
        x = x.to(params["input_weight"].dtype)
        h = self._act(x @ params["input_weight"].transpose(-1, -2)
                      + params["input_bias"].unsqueeze(-2))
        for n in range(self.depth):
            weight = params["hidden_weight"][..., n, :, :]
            bias = params["hidden_bias"][..., n, :]
            h = self._act(h @ weight.transpose(-1, -2) + bias.unsqueeze(-2))
        return h @ params["output_weight"].transpose(-1, -2) + params["output_bias"].unsqueeze(-2)

    __call__ = forward

    def config(self) -> dict[str, Any]:
        return {
            "name": "MLP",
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "width": self.width,
            "depth": self.depth,
            "activation": self.activation,
        }


def network_from_config(config: Mapping[str, Any]) -> Network:
    """Rebuild a :class:`ResNet` or :class:`MLP` from its ``config()``."""
    config = dict(config)
    name = config.pop("name", None)
    if name == "ResNet":
        config["basis"] = basis_from_config(config["basis"])
        return ResNet(**config)
    if name == "MLP":
        return MLP(**config)
    raise ValueError(f"unknown network {name!r}; expected 'ResNet' or 'MLP'")
