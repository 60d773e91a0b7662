"""The global network's optimizers, chosen by name."""

from __future__ import annotations

from typing import Iterable

import torch

try:  # the one-pass step in C (learner/_rmsprop.c), built when the package is installed with a C compiler
    from learner import _rmsprop
except ImportError:
    _rmsprop = None


class TFStyleRMSprop(torch.optim.Optimizer):
    """RMSProp as TensorFlow computes it, and with it the A3C paper and the OpenAI baselines A2C:
    the running mean square starts at one and eps sits inside the square root.

    PyTorch's RMSprop starts the mean square at zero, so its first step moves a weight by about ten times lr
    (g / sqrt(0.01 g^2)) for any gradient well above eps: a hard kick to the untrained network, which on Pong
    left a seed at a uniform policy. Once the initial one has decayed (about 2,000 steps at alpha 0.99), eps
    1e-10 inside the root takes the same steps as PyTorch's 1e-5 outside it.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, alpha: float = 0.99, eps: float = 1e-10) -> None:
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 - torch's signature
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            averages = []
            for param in params:
                state = self.state[param]
                if "square_avg" not in state:
                    state["square_avg"] = torch.ones_like(param, memory_format=torch.preserve_format)
                averages.append(state["square_avg"])
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            rest = []
            for param, grad, average in zip(params, grads, averages):
                if _fits_fused_step(param, grad, average):  # the learner's flat buffer: one pass in C
                    _rmsprop.step(param.detach().numpy(), average.numpy(), grad.numpy(), lr, alpha, eps)
                else:
                    rest.append((param, grad, average))
            if rest:
                params, grads, averages = (list(column) for column in zip(*rest))
                torch._foreach_mul_(averages, alpha)
                torch._foreach_addcmul_(averages, grads, grads, value=1 - alpha)
                # Multiplying by rsqrt costs less than dividing by sqrt.
                inverse_roots = torch._foreach_add(averages, eps)
                torch._foreach_rsqrt_(inverse_roots)
                torch._foreach_addcmul_(params, grads, inverse_roots, value=-lr)


def fused_step_available() -> bool:
    return _rmsprop is not None


def _fits_fused_step(param: torch.Tensor, grad: torch.Tensor, average: torch.Tensor) -> bool:
    """The C step takes float32 CPU buffers laid out alike: the learner's one flat parameter always is."""
    return (_rmsprop is not None and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
                                         and t.shape == param.shape for t in (param, grad, average)))


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float, rmsprop_alpha: float,
                   eps: float) -> torch.optim.Optimizer:
    params = list(params)
    if name == "rmsprop":
        return TFStyleRMSprop(params, lr=lr, alpha=rmsprop_alpha, eps=eps)
    if name == "torch-rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=rmsprop_alpha, eps=eps)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")
