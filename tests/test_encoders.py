import pytest
import torch
from torch import nn

from factorcl_hf.objectives import OBJECTIVES, SimCLRObjective, build_objective
from factorcl_hf.research.encoders import MLPEncoder, VectorFactorCL

D1, D2, EMBED, HEAD = 7, 5, 6, 4
TINY = dict(
    hidden_dim=12, embed_dim=EMBED, num_layers=1, head_dim=HEAD, head_hidden_dim=8, critic_hidden_dim=8,
    alignment_critic_type="concat",
)


def tiny_model(method="factorcl_sup", **kwargs):
    torch.manual_seed(0)
    return VectorFactorCL((D1, D2), method, num_labels=3, **{**TINY, **kwargs})


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D1, generator=g), torch.randn(n, D2, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("num_layers", [0, 1, 3])
def test_mlp_encoder_layers_and_shape(num_layers):
    encoder = MLPEncoder(D1, hidden_dim=9, embed_dim=EMBED, num_layers=num_layers)
    linears = [m for m in encoder if isinstance(m, nn.Linear)]
    assert len(linears) == num_layers + 1
    assert linears[0].in_features == D1 and linears[-1].out_features == EMBED
    assert sum(isinstance(m, nn.ReLU) for m in encoder) == num_layers
    assert encoder(torch.randn(4, D1)).shape == (4, EMBED)


def test_mlp_encoder_matches_manual_computation():
    encoder = MLPEncoder(D1, hidden_dim=9, embed_dim=EMBED, num_layers=1)
    x = torch.randn(3, D1)
    first, last = encoder[0], encoder[2]
    expected = torch.relu(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
    torch.testing.assert_close(encoder(x), expected)


def test_mlp_encoder_rejects_bad_input():
    encoder = MLPEncoder(D1, hidden_dim=9, embed_dim=EMBED)
    with pytest.raises(ValueError, match=rf"inputs.*\[batch, {D1}\]"):
        encoder(torch.randn(3, D1 + 1))
    with pytest.raises(ValueError, match="num_layers"):
        MLPEncoder(D1, num_layers=-1)
    with pytest.raises(ValueError, match="embed_dim"):
        MLPEncoder(D1, embed_dim=0)


@pytest.mark.parametrize("method", OBJECTIVES)
def test_forward_uses_the_shared_objective_classes(method):
    model = tiny_model(method)
    x1, x2, y = batch()
    inputs = {}
    if model.requires_labels:
        inputs["labels"] = y
    if model.requires_augmented:
        inputs.update(augmented_1=x1 + 0.1, augmented_2=x2 - 0.1)
    out = model(x1, x2, **inputs)
    assert type(model.objective) is type(build_objective(method, (EMBED, EMBED), num_labels=3))
    # The model adds nothing to the loss: it is the objective's on the encoders' features.
    feature_inputs = dict(inputs)
    if model.requires_augmented:
        feature_inputs["augmented_1"] = model.encode(inputs["augmented_1"], 0)
        feature_inputs["augmented_2"] = model.encode(inputs["augmented_2"], 1)
    reference = model.objective(model.encode(x1, 0), model.encode(x2, 1), **feature_inputs)
    torch.testing.assert_close(out.loss, reference.loss)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)


def test_parameter_groups_partition_the_model():
    model = tiny_model("factorcl_ssl", estimators="tracked")
    main = {id(p) for p in model.main_parameters()}
    club = {id(p) for p in model.club_critic_parameters()}
    assert club and not main & club
    assert main | club == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.encoders.parameters()} <= main
    assert tiny_model("simclr").club_critic_parameters() == []
    assert tiny_model("factorcl_ssl").club_critic_parameters() == []  # closed_form: no CLUB critics


def test_embed_shapes_and_contents():
    model = tiny_model("factorcl_sup")
    x1, x2, _ = batch(5)
    out = model.embed(x1, x2)
    z_s, z_u = 2 * HEAD, 3 * HEAD  # [shared; shared_cond], [unique; unique_label; unique_cond]
    assert out["factorized"].shape == (5, 2 * (z_s + z_u))
    assert out["backbone"].shape == (5, 2 * EMBED)
    torch.testing.assert_close(out["backbone"], torch.cat([model.encode(x1, 0), model.encode(x2, 1)], 1))
    expected = torch.cat([out["shared_1"], out["unique_1"], out["shared_2"], out["unique_2"]], 1)
    torch.testing.assert_close(out["factorized"], expected)
    assert not out["factorized"].requires_grad

    baseline = tiny_model("simclr").embed(x1, x2)
    assert "unique_1" not in baseline and baseline["factorized"].shape == (5, 2 * HEAD)


def test_embed_batches_and_restores_training_mode():
    model = tiny_model("ourcl_sup")
    x1, x2, _ = batch(7)
    model.train()
    whole, chunked = model.embed(x1, x2), model.embed(x1, x2, batch_size=3)
    assert model.training
    for key in whole:
        torch.testing.assert_close(whole[key], chunked[key])


def test_augmented_views_share_one_encoder_call():
    model = tiny_model("cross_self")
    x1, x2, _ = batch()
    calls = []
    model.encoders[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    out = model(x1, x2, augmented_1=x1 * 0.9, augmented_2=x2 * 0.9)
    assert calls == [2 * len(x1)]
    separate = model.objective(
        model.encode(x1, 0), model.encode(x2, 1),
        augmented_1=model.encode(x1 * 0.9, 0), augmented_2=model.encode(x2 * 0.9, 1),
    )
    torch.testing.assert_close(out.loss, separate.loss)


def test_bad_arguments_raise_value_errors():
    x1, x2, y = batch()
    with pytest.raises(ValueError, match="input_dims"):
        VectorFactorCL((D1,), "simclr")
    with pytest.raises(ValueError, match="objective"):
        VectorFactorCL((D1, D2), "clip_loss", **TINY)
    with pytest.raises(ValueError, match="expects features"):
        VectorFactorCL((D1, D2), SimCLRObjective((EMBED + 1, EMBED + 1)), embed_dim=EMBED)
    with pytest.raises(ValueError, match="objective_kwargs"):
        VectorFactorCL((D1, D2), SimCLRObjective((EMBED, EMBED)), embed_dim=EMBED, temperature=0.5)
    with pytest.raises(ValueError, match="augmented_1"):
        tiny_model("factorcl_ssl")(x1, x2, augmented_1=x1[:3], augmented_2=x2)
    with pytest.raises(ValueError, match="labels"):
        tiny_model("supcon")(x1, x2)
    with pytest.raises(ValueError, match="same number of rows"):
        tiny_model("simclr").embed(x1, x2[:2])
