"""The learner's default RMSProp computes what TensorFlow's did for the A3C and A2C reference results."""

import copy
import os

import pytest
import torch

from a3c.model import ModelSpec, build_model
from learner import optimizers
from learner.optimizers import TFStyleRMSprop, make_optimizer

LR, ALPHA, EPS = 7e-4, 0.99, 1e-5


def gradient_sequence(params, steps: int, scale: float = 1e-3) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [[torch.randn(p.shape, generator=generator) * scale for p in params] for _ in range(steps)]


def test_steps_follow_the_tensorflow_formula_on_the_pong_network():
    model = build_model(ModelSpec("cnn", (4, 84, 84), 6))  # channels-last convolutions included
    expected = [p.detach().clone() for p in model.parameters()]
    mean_squares = [torch.ones_like(p) for p in expected]
    optimizer = make_optimizer("rmsprop", model.parameters(), LR, ALPHA, EPS)
    # Gradients of about 1, so that the squared gradient's weight shows against the mean square's start at 1.
    for grads in gradient_sequence(expected, steps=3, scale=1.0):
        for param, grad in zip(model.parameters(), grads):
            param.grad = grad
        optimizer.step()
        for weight, mean_square, grad in zip(expected, mean_squares, grads):
            mean_square.mul_(ALPHA).add_((1 - ALPHA) * grad * grad)
            weight.sub_(LR * grad / torch.sqrt(mean_square + EPS))
    for param, weight in zip(model.parameters(), expected):
        torch.testing.assert_close(param.detach(), weight, rtol=1e-5, atol=1e-9)


def test_first_steps_scale_with_the_gradient_unlike_torch_rmsprop():
    # The reason for the default: PyTorch's RMSProp moves every weight by about 10 x lr on its first step, for
    # any gradient well above eps; the TensorFlow form moves it by about lr x gradient.
    moves = {}
    for name in ("rmsprop", "torch-rmsprop"):
        weight = torch.nn.Parameter(torch.zeros(1000))
        optimizer = make_optimizer(name, [weight], LR, ALPHA, EPS)
        weight.grad = torch.full_like(weight, 1e-2)
        optimizer.step()
        moves[name] = weight.detach().abs().max().item()
    assert moves["rmsprop"] < 1.1 * LR * 1e-2
    assert moves["torch-rmsprop"] > 9 * LR


def test_state_saved_mid_run_resumes_to_the_same_weights():
    steps = gradient_sequence([torch.zeros(3, 5)], steps=4)
    weights, optimizers = [], []
    for _ in range(2):
        weights.append(torch.nn.Parameter(torch.ones(3, 5)))
        optimizers.append(TFStyleRMSprop([weights[-1]], lr=LR))
    for grads in steps[:2]:
        weights[0].grad = grads[0]
        optimizers[0].step()
    weights[1].data.copy_(weights[0].detach())
    optimizers[1].load_state_dict(copy.deepcopy(optimizers[0].state_dict()))  # as from a checkpoint file
    for grads in steps[2:]:
        for weight, optimizer in zip(weights, optimizers):
            weight.grad = grads[0].clone()
            optimizer.step()
    assert torch.equal(weights[0].detach(), weights[1].detach())


def test_the_learner_takes_the_one_pass_step_in_c_where_it_was_built():
    # `make test` builds it (the machines have a C compiler); a user without one gets torch's passes instead.
    if os.environ.get("CI"):
        assert optimizers.fused_step_available(), "learner/_rmsprop.c was not built"
    elif not optimizers.fused_step_available():
        pytest.skip("learner/_rmsprop.c is not built here (no C compiler at install time)")
    torch.manual_seed(0)
    fused = torch.nn.Parameter(torch.randn(100_000))
    plain = torch.nn.Parameter(fused.detach().clone())
    start = fused.detach().clone()
    by_c, by_torch = TFStyleRMSprop([fused], LR, ALPHA, EPS), TFStyleRMSprop([plain], LR, ALPHA, EPS)
    built, calls = optimizers._rmsprop, []

    class CountingStep:  # the C module, counting its steps: the test must see C take them
        @staticmethod
        def step(*args):
            calls.append(1)
            return built.step(*args)

    try:
        for _ in range(20):  # gradients from 1e-8 to 0.1, and exact zeros (dead units)
            grad = torch.randn(100_000) * 10 ** torch.empty(100_000).uniform_(-8, -1) * (torch.rand(100_000) > 0.1)
            fused.grad, plain.grad = grad.clone(), grad.clone()
            optimizers._rmsprop = CountingStep
            by_c.step()
            optimizers._rmsprop = None
            by_torch.step()
    finally:
        optimizers._rmsprop = built
    assert len(calls) == 20
    torch.testing.assert_close(fused.detach(), plain.detach(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(by_c.state[fused]["square_avg"], by_torch.state[plain]["square_avg"], rtol=1e-5,
                               atol=0)
    assert not torch.equal(fused.detach(), start) and torch.isfinite(fused).all()  # the steps moved the weights


def test_the_one_pass_step_refuses_buffers_of_different_sizes():
    if not optimizers.fused_step_available():
        pytest.skip("learner/_rmsprop.c is not built here")
    with pytest.raises(ValueError, match="one size"):
        optimizers._rmsprop.step(torch.zeros(4).numpy(), torch.ones(3).numpy(), torch.zeros(4).numpy(), LR, ALPHA, EPS)
