"""The A3C loss terms and n-step returns against slow NumPy versions written in the paper's notation."""

import numpy as np
import pytest
import torch

from a3c.losses import a3c_loss, n_step_returns


def reference_returns(rewards, dones, bootstrap, gamma):
    """R <- r_t + gamma * R, with R reset to 0 after an episode end and R = V(s_T) at the start."""
    T, N = rewards.shape
    out = np.zeros((T, N))
    for n in range(N):
        R = bootstrap[n]
        for t in reversed(range(T)):
            if dones[t, n]:
                R = 0.0
            R = rewards[t, n] + gamma * R
            out[t, n] = R
    return out


def reference_loss(logits, values, actions, returns, beta, c):
    """Per-sample terms averaged over the batch, and their analytic gradients w.r.t. logits and values."""
    B, A = logits.shape
    total, pol, val, ent = 0.0, 0.0, 0.0, 0.0
    d_logits, d_values = np.zeros((B, A)), np.zeros(B)
    for i in range(B):
        z = logits[i] - logits[i].max()
        pi = np.exp(z) / np.exp(z).sum()
        log_pi = np.log(pi)
        adv = returns[i] - values[i]
        H = -(pi * log_pi).sum()
        pol += -log_pi[actions[i]] * adv / B
        val += 0.5 * adv ** 2 / B
        ent += H / B
        onehot = np.eye(A)[actions[i]]
        d_policy = -(onehot - pi) * adv            # d(-log pi(a) * A)/dz, advantage held constant
        d_entropy = -pi * (log_pi + H)             # dH/dz
        d_logits[i] = (d_policy - beta * d_entropy) / B
        d_values[i] = c * (values[i] - returns[i]) / B
    total = pol + c * val - beta * ent
    return total, pol, val, ent, d_logits, d_values


def test_returns_without_bootstrap_or_dones_is_discounted_sum():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    returns = n_step_returns(rewards, torch.zeros(3, 1), torch.zeros(1), gamma=0.5)
    assert returns[:, 0].tolist() == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]


def test_returns_bootstrap_from_value_of_last_state():
    rewards = torch.tensor([[0.0], [1.0]])
    returns = n_step_returns(rewards, torch.zeros(2, 1), torch.tensor([10.0]), gamma=0.9)
    assert returns[:, 0].tolist() == pytest.approx([0.9 * (1 + 0.9 * 10), 1 + 0.9 * 10])


def test_returns_do_not_leak_across_episode_end():
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    returns = n_step_returns(rewards, dones, torch.tensor([100.0]), gamma=1.0)
    # Steps 0-1 belong to an episode that ended at step 1: no bootstrap reaches them.
    assert returns[:, 0].tolist() == [2.0, 1.0, 101.0]


@pytest.mark.parametrize("seed", range(5))
def test_returns_match_reference_on_random_rollouts(seed):
    rng = np.random.default_rng(seed)
    T, N = 7, 4
    rewards = rng.normal(size=(T, N))
    dones = (rng.random((T, N)) < 0.25).astype(np.float64)
    bootstrap = rng.normal(size=N)
    ours = n_step_returns(torch.tensor(rewards), torch.tensor(dones), torch.tensor(bootstrap), 0.97)
    np.testing.assert_allclose(ours.numpy(), reference_returns(rewards, dones, bootstrap, 0.97), rtol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_loss_values_and_gradients_match_reference(seed):
    rng = np.random.default_rng(seed)
    B, A = 12, 5
    logits = rng.normal(size=(B, A)) * 2
    values = rng.normal(size=B)
    actions = rng.integers(0, A, size=B)
    returns = rng.normal(size=B)
    beta, c = 0.03, 0.7

    z = torch.tensor(logits, requires_grad=True)
    v = torch.tensor(values, requires_grad=True)
    loss = a3c_loss(z, v, torch.tensor(actions), torch.tensor(returns), beta, c)
    loss.total.backward()

    total, pol, val, ent, d_logits, d_values = reference_loss(logits, values, actions, returns, beta, c)
    assert loss.total.item() == pytest.approx(total, rel=1e-10)
    assert loss.policy.item() == pytest.approx(pol, rel=1e-10)
    assert loss.value.item() == pytest.approx(val, rel=1e-10)
    assert loss.entropy.item() == pytest.approx(ent, rel=1e-10)
    np.testing.assert_allclose(z.grad.numpy(), d_logits, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(v.grad.numpy(), d_values, rtol=1e-8, atol=1e-12)


def test_policy_term_sends_no_gradient_into_the_value():
    z = torch.zeros(3, 2, requires_grad=True)
    v = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    loss = a3c_loss(z, v, torch.tensor([0, 1, 0]), torch.tensor([1.0, 1.0, 1.0]), entropy_coef=0.0, value_coef=0.0)
    loss.total.backward()
    assert v.grad is None or torch.count_nonzero(v.grad) == 0
    assert torch.count_nonzero(z.grad) > 0


def test_entropy_of_uniform_policy_is_log_actions():
    loss = a3c_loss(torch.zeros(4, 6), torch.zeros(4), torch.zeros(4, dtype=torch.int64), torch.zeros(4), 0.01, 0.5)
    assert loss.entropy.item() == pytest.approx(np.log(6))
