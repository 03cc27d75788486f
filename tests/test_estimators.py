import math

import pytest
import torch
from torch import nn

from factorcl_hf.estimators import (
    ConcatCritic,
    CosineCritic,
    NCECLUBEstimator,
    SeparableCritic,
    _PairwiseReluLinear,  # the fused layer behind ConcatCritic
    build_critic,
    club_upper_bound,
    condition_on,
    fit_critic,
    infonce_lower_bound,
)


def unsplit_mlp(critic: ConcatCritic) -> nn.Sequential:
    """The critic as the textbook MLP over [x; y] (an independent implementation)."""
    first = nn.Linear(critic.x_dim + critic.y_dim, critic.hidden_dim).to(critic.x_proj.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(critic.first_layer_weight)
        first.bias.copy_(critic.x_proj.bias)
    return nn.Sequential(first, nn.ReLU(), *critic.head)


def tiled_scores(mlp, x, y):
    """S[i, j] = mlp([x_i; y_j]) built from B² concatenated rows, the reference design."""
    bx, by = len(x), len(y)
    pairs = torch.cat([x.repeat_interleave(by, 0), y.repeat(bx, 1)], dim=1)
    return mlp(pairs).view(bx, by)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch,chunk", [(2, None), (7, None), (9, 4), (16, 5), (16, 16)])
def test_concat_critic_all_pairs_match_per_pair(layers, batch, chunk):
    torch.manual_seed(batch + layers)
    critic = ConcatCritic(5, 3, hidden_dim=11, num_hidden_layers=layers, chunk_size=chunk).double()
    x = torch.randn(batch, 5, dtype=torch.double, requires_grad=True)
    y = torch.randn(batch, 3, dtype=torch.double, requires_grad=True)
    scores = critic(x, y)
    assert scores.shape == (batch, batch)

    # Independent: the critic's own aligned path on tiled inputs, and the unsplit MLP.
    xi, yj = x.repeat_interleave(batch, 0), y.repeat(batch, 1)
    per_pair = critic.score_pairs(xi, yj).view(batch, batch)
    reference = tiled_scores(unsplit_mlp(critic), x, y)
    torch.testing.assert_close(scores, per_pair)
    torch.testing.assert_close(scores, reference)

    weights = torch.randn(batch, batch, dtype=torch.double)
    grads = torch.autograd.grad((scores * weights).sum(), [x, y, *critic.parameters()])
    ref_grads = torch.autograd.grad((per_pair * weights).sum(), [x, y, *critic.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_concat_critic_rectangular_and_score_pairs():
    critic = ConcatCritic(4, 4, hidden_dim=8)
    x, y = torch.randn(3, 4), torch.randn(5, 4)
    scores = critic(x, y)
    assert scores.shape == (3, 5)
    torch.testing.assert_close(scores[1, 4], critic.score_pairs(x[1:2], y[4:5])[0])


def test_separable_and_cosine_critics_match_definitions():
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    sep = SeparableCritic(4, 3, hidden_dim=8, embed_dim=5)
    manual = torch.stack([torch.stack([sep.x_embed(xi) @ sep.y_embed(yj) for yj in y]) for xi in x])
    torch.testing.assert_close(sep(x, y), manual)
    torch.testing.assert_close(sep.score_pairs(x, y[:6]), manual.diagonal())

    cos = CosineCritic(4, 4, temperature=0.5)
    x2 = torch.randn(6, 4)
    manual = torch.tensor([[torch.cosine_similarity(a, b, dim=0) / 0.5 for b in x2] for a in x])
    torch.testing.assert_close(cos(x, x2), manual)


def test_infonce_closed_form_and_bound():
    batch, c = 5, 3.0
    scores = c * torch.eye(batch)
    expected = c - (math.log(math.exp(c) + batch - 1) - math.log(batch))
    assert infonce_lower_bound(scores).item() == pytest.approx(expected, rel=1e-6)
    # A hand-made 2x2 matrix.
    s = torch.tensor([[1.0, 0.0], [2.0, 4.0]])
    expected = (1 + 4) / 2 - ((math.log(math.e + 1) - math.log(2)) + (math.log(math.e**2 + math.e**4) - math.log(2))) / 2
    assert infonce_lower_bound(s).item() == pytest.approx(expected, rel=1e-6)
    # Never above log B, however large the diagonal.
    g = torch.Generator().manual_seed(0)
    for batch in (2, 8, 64):
        for scale in (0.1, 10.0, 1e4):
            s = scale * torch.randn(batch, batch, generator=g) + scale * 10 * torch.eye(batch)
            assert infonce_lower_bound(s).item() <= math.log(batch) + 1e-4


def test_club_closed_form():
    batch, c = 4, 2.0
    assert club_upper_bound(c * torch.eye(batch)).item() == pytest.approx(c - c / batch)
    s = torch.arange(9.0).view(3, 3)
    assert club_upper_bound(s).item() == pytest.approx((0 + 4 + 8) / 3 - 4.0)


def test_nce_club_gradients_reach_inputs_not_critic():
    torch.manual_seed(0)
    est = NCECLUBEstimator(ConcatCritic(3, 3, hidden_dim=8))
    x, y = torch.randn(6, 3, requires_grad=True), torch.randn(6, 3, requires_grad=True)
    bound = est(x, y)
    torch.testing.assert_close(bound, club_upper_bound(est.critic(x, y)))
    bound.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in est.critic.parameters())

    x.grad = None
    est.critic_loss(x, y).backward()
    assert x.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in est.critic.parameters())


def test_condition_on_concatenates():
    a, z = torch.randn(4, 3), torch.randn(4, 2)
    torch.testing.assert_close(condition_on(a, z), torch.cat([a, z], 1))
    with pytest.raises(ValueError, match="condition"):
        condition_on(a, torch.randn(3, 2))


def test_bad_inputs_name_the_argument():
    critic = ConcatCritic(3, 2, hidden_dim=4)
    with pytest.raises(ValueError, match="`x`.*3 features"):
        critic(torch.randn(4, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="`y`.*batch size"):
        critic.score_pairs(torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match="`x`.*shape"):
        critic(torch.randn(4), torch.randn(4, 2))
    with pytest.raises(ValueError, match="batch size 1"):
        infonce_lower_bound(torch.randn(1, 1))
    with pytest.raises(ValueError, match="square"):
        club_upper_bound(torch.randn(2, 3))
    with pytest.raises(ValueError, match="critic_type"):
        build_critic("bilinear", 2, 2)
    with pytest.raises(ValueError, match="x_dim == y_dim"):
        CosineCritic(2, 3)


# ----------------------------------------------------------- fused first hidden layer
def _double_leaf(*shape, generator):
    return torch.randn(*shape, dtype=torch.double, generator=generator).requires_grad_()


@pytest.mark.parametrize("out_dim", [1, 4])
@pytest.mark.parametrize("rows,cols,block_rows", [(5, 4, 5), (5, 4, 2), (6, 3, 1), (3, 7, 8)])
def test_fused_pairwise_layer_gradcheck(out_dim, rows, cols, block_rows):
    """Finite differences in double precision, every input, whole and row-blocked passes."""
    g = torch.Generator().manual_seed(rows * 10 + cols + out_dim)
    hidden = 6
    inputs = (
        _double_leaf(rows, hidden, generator=g),
        _double_leaf(cols, hidden, generator=g),
        _double_leaf(out_dim, hidden, generator=g),
        _double_leaf(out_dim, generator=g),
    )

    def fused(hx, hy, weight, bias):
        return _PairwiseReluLinear.apply(hx, hy, weight, bias, block_rows)

    assert torch.autograd.gradcheck(fused, inputs)
    hx, hy, weight, bias = inputs
    expected = torch.relu(hx[:, None, :] + hy[None, :, :]) @ weight.T + bias  # the unfused layer
    torch.testing.assert_close(fused(*inputs), expected)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("chunk", [None, 2, 3])
def test_concat_critic_gradcheck(layers, chunk):
    """The critic as a function of its inputs *and* parameters, with and without chunking."""
    torch.manual_seed(layers * 7 + (chunk or 0))
    critic = ConcatCritic(3, 4, hidden_dim=5, num_hidden_layers=layers, chunk_size=chunk).double()
    names = [name for name, _ in critic.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in critic.parameters())
    x = torch.randn(5, 3, dtype=torch.double, requires_grad=True)
    y = torch.randn(4, 4, dtype=torch.double, requires_grad=True)

    def scores(x, y, *params):
        return torch.func.functional_call(critic, dict(zip(names, params)), (x, y))

    assert torch.autograd.gradcheck(scores, (x, y, *params))


@pytest.mark.parametrize("out_dim", [1, 3])
def test_fused_layer_partial_gradients_match_full(out_dim):
    """Only the requested gradients are computed, and they equal the full backward's."""
    g = torch.Generator().manual_seed(3)
    inputs = [_double_leaf(*shape, generator=g) for shape in ((6, 5), (4, 5), (out_dim, 5), (out_dim,))]
    weights = torch.randn(6, 4, out_dim, dtype=torch.double, generator=g)
    full = torch.autograd.grad((_PairwiseReluLinear.apply(*inputs, 2) * weights).sum(), inputs)
    for subset in ([0], [1], [2, 3], [0, 2]):
        chosen = [inputs[i] for i in subset]
        partial = torch.autograd.grad((_PairwiseReluLinear.apply(*inputs, 2) * weights).sum(), chosen)
        for i, grad in zip(subset, partial):
            torch.testing.assert_close(grad, full[i])


def _largest_saved_tensor(critic, x, y) -> int:
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        (-infonce_lower_bound(critic(x, y))).backward()
    return max(sizes)


def test_one_hidden_layer_critic_keeps_no_pairwise_activation():
    """Training memory: nothing of size B·B·H is saved for backward (B·H at most)."""
    torch.manual_seed(0)
    batch, dim, hidden = 24, 6, 16
    x, y = torch.randn(batch, dim, requires_grad=True), torch.randn(batch, dim, requires_grad=True)
    assert _largest_saved_tensor(ConcatCritic(dim, dim, hidden), x, y) <= batch * max(hidden, batch)
    # The two-layer head keeps one [B, B, H] activation (its second layer's input), no more.
    two = _largest_saved_tensor(ConcatCritic(dim, dim, hidden, num_hidden_layers=2), x, y)
    assert two == batch * batch * hidden


def test_concat_critic_under_bf16_autocast_matches_unfused():
    torch.manual_seed(0)
    critic = ConcatCritic(8, 8, hidden_dim=16)
    x, y = torch.randn(12, 8, requires_grad=True), torch.randn(12, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = critic(x, y)
        reference = tiled_scores(unsplit_mlp(critic), x, y)
    assert scores.dtype == torch.bfloat16
    torch.testing.assert_close(scores.float(), reference.float(), atol=0.05, rtol=0.05)
    shared = [x, y, *critic.head.parameters()]  # the unsplit MLP copies the first layer
    grads = torch.autograd.grad(scores.float().sum(), shared)
    ref_grads = torch.autograd.grad(reference.float().sum(), shared)
    for grad, ref, param in zip(grads, ref_grads, shared):
        assert grad.dtype == param.dtype
        torch.testing.assert_close(grad, ref, atol=0.05 * ref.abs().max().item(), rtol=0.05)


def test_fit_critic_recovers_a_known_mutual_information_from_below():
    """Correlated Gaussians, rho = 0.9 per dimension, d = 2: I = -d/2 log(1 - rho^2) = 1.66
    nats. A fitted critic's held-out InfoNCE approaches it from below; on independent pairs
    it stays at ~0."""
    g = torch.Generator().manual_seed(0)
    d, rho, n = 2, 0.9, 6000
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)
    true_mi = -d / 2 * math.log(1 - rho**2)

    def held_out_infonce(x, y):
        torch.manual_seed(0)
        critic = fit_critic(ConcatCritic(d, d, hidden_dim=64), x[:5000], y[:5000], 400, 5e-3, 128, g)
        with torch.no_grad():
            return torch.stack([infonce_lower_bound(critic(x[i : i + 128], y[i : i + 128])) for i in range(5000, 5896, 128)]).mean().item()

    dependent = held_out_infonce(x, y)
    assert 0.75 * true_mi < dependent < true_mi + 0.05
    assert abs(held_out_infonce(x, y[torch.randperm(n, generator=g)])) < 0.1
    with pytest.raises(ValueError, match="pair up row by row"):
        fit_critic(ConcatCritic(d, d), x[:10], y[:9], 1, 1e-3, 4)
