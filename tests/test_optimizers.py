"""The learner's default RMSProp computes what TensorFlow's did for the A3C and A2C reference results."""

import copy

import torch

from a3c.model import ModelSpec, build_model
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
    for grads in gradient_sequence(expected, steps=3):
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
