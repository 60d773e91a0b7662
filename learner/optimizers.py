"""The global network's optimizers, chosen by name."""

from __future__ import annotations

from typing import Iterable

import torch


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
            torch._foreach_mul_(averages, group["alpha"])
            torch._foreach_addcmul_(averages, grads, grads, value=1 - group["alpha"])
            # Multiplying by rsqrt costs less than dividing by sqrt (1.45 against 1.68 ms on the Pong network, flat).
            inverse_roots = torch._foreach_add(averages, group["eps"])
            torch._foreach_rsqrt_(inverse_roots)
            torch._foreach_addcmul_(params, grads, inverse_roots, value=-group["lr"])


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
