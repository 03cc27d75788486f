"""FactorCL's closed-form layout (`estimators="closed_form"`): its trained terms against
naive formulas, its fitted factorization on data whose shared and unique parts are known,
and its place in the objective registry, the model and a saved folder."""

import math

import pytest
import torch
import torch.nn.functional as F

from factorcl_hf import FactorCLModel
from factorcl_hf.evaluation.probe import latent_decoding_r2
from factorcl_hf.objectives import ClosedFormFactorCLObjective, FactorCLObjective, build_objective
from factorcl_hf.research.encoders import VectorFactorCL
from factorcl_hf.research.synthetic import make_synthetic
from factorcl_hf.testing_utils import save_tiny_model


def naive_infonce(a, b, temperature):
    """Mean over rows of log softmax of the positive, plus log B (one direction)."""
    scores = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    return float((scores.diagonal() - scores.logsumexp(dim=1)).mean().detach() + math.log(len(a)))


def heads_of(objective, features, augmented=None):
    out = [objective.heads[m](features[m]) for m in range(2)]
    views = [objective.heads[m](augmented[m])["unique"] for m in range(2)] if augmented else None
    return out, views


def test_ssl_terms_are_the_naive_formulas():
    torch.manual_seed(0)
    objective = ClosedFormFactorCLObjective((12, 12), supervised=False, head_dim=8, head_hidden_dim=16, temperature=0.2)
    features = [torch.randn(10, 12) for _ in range(2)]
    augmented = [f + 0.1 * torch.randn_like(f) for f in features]
    out = objective(*features, augmented_1=augmented[0], augmented_2=augmented[1])
    heads, views = heads_of(objective, features, augmented)
    s1, s2 = heads[0]["shared"], heads[1]["shared"]
    expected_nce = (naive_infonce(s1, s2, 0.2) + naive_infonce(s2, s1, 0.2)) / 2
    assert float(out.loss_terms["shared_nce"]) == pytest.approx(expected_nce, abs=1e-5)
    alignment = ((F.normalize(s1, dim=-1) - F.normalize(s2, dim=-1)) ** 2).sum(1).mean()
    assert float(out.loss_terms["shared_alignment"]) == pytest.approx(float(alignment.detach()), abs=1e-6)
    for m in range(2):
        u, v = heads[m]["unique"], views[m]
        expected = (naive_infonce(u, v, 0.2) + naive_infonce(v, u, 0.2)) / 2
        assert float(out.loss_terms[f"unique_label_nce_{m + 1}"]) == pytest.approx(expected, abs=1e-5)
    total = -expected_nce + float(alignment.detach()) - sum(float(out.loss_terms[f"unique_label_nce_{m}"]) for m in (1, 2))
    assert float(out.loss.detach()) == pytest.approx(total, abs=1e-5)


def test_sup_label_terms_are_infonce_between_the_unique_head_and_the_label():
    torch.manual_seed(1)
    objective = ClosedFormFactorCLObjective((6, 6), supervised=True, num_labels=3, head_dim=4, head_hidden_dim=8)
    features = [torch.randn(9, 6) for _ in range(2)]
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 1])
    out = objective(*features, labels=labels)
    one_hot = F.one_hot(labels, 3).float()
    for m in range(2):
        u = objective.heads[m](features[m])["unique"]
        scores = objective.label_critics[m](u, one_hot)
        expected = float((scores.diagonal() - scores.logsumexp(dim=1)).mean().detach() + math.log(9))
        assert float(out.loss_terms[f"unique_label_nce_{m + 1}"]) == pytest.approx(expected, abs=1e-5)


def test_before_the_fit_the_embeddings_are_the_heads():
    torch.manual_seed(2)
    objective = ClosedFormFactorCLObjective((5, 5), supervised=False, head_dim=4, head_hidden_dim=8)
    features = torch.randn(7, 5)
    heads = objective.heads[0](features)
    representation = objective.represent(features, 0)
    assert not objective.factorization_fitted
    assert torch.equal(representation.shared, F.normalize(heads["shared"], dim=-1))
    assert torch.equal(representation.unique, heads["unique"])
    assert torch.equal(representation.alignment, heads["shared"])


def _trained_vector_model(seed=0):
    splits = make_synthetic(num_samples=3000, unique_share=0.5, seed=seed)
    torch.manual_seed(seed)
    model = VectorFactorCL((splits.train.x1.shape[1], splits.train.x2.shape[1]), "factorcl_ssl", hidden_dim=128,
                           embed_dim=64, head_dim=32, head_hidden_dim=64)
    optimizer = torch.optim.Adam(model.main_parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    x1, x2 = splits.train.x1, splits.train.x2
    for _ in range(4):
        for rows in torch.randperm(len(x1), generator=generator).split(128):
            views = [x[rows] + 0.1 * torch.randn(len(rows), x.shape[1], generator=generator) for x in (x1, x2)]
            loss = model(x1[rows], x2[rows], augmented_1=views[0], augmented_2=views[1]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model, splits


@pytest.mark.slow
def test_fitted_factorization_separates_the_known_latents():
    """Synthetic data: x1 sees (shared, unique1), x2 (shared, unique2). After the fit, Z_U1 holds
    unique1 and not the shared latents; Z_S1 holds the shared latents and not unique1 (ridge R²
    on the test split). Before the fit both hold both."""
    model, splits = _trained_vector_model()
    train, test = splits.train, splits.test

    def r2(name, latent):
        embed = [model.embed(s.x1, s.x2)[name] for s in (train, test)]
        return latent_decoding_r2(embed[0], train.latents[latent], embed[1], test.latents[latent])

    before = {("unique_1", "shared"): r2("unique_1", "shared"), ("shared_1", "unique1"): r2("shared_1", "unique1")}
    report = model.fit_factorization(train.x1, train.x2)
    assert 0 < report["unique_erased_fraction_1"] < 1
    # Measured at this budget: 0.72 -> 0.09 and 0.39 -> 0.05; the own latents stay at 0.63 / 0.70.
    assert r2("unique_1", "shared") < 0.15 and before[("unique_1", "shared")] > 0.5
    assert r2("shared_1", "unique1") < 0.15 and before[("shared_1", "unique1")] > 0.3
    assert r2("unique_1", "unique1") > 0.5
    assert r2("shared_1", "shared") > 0.5


def test_the_registry_builds_the_closed_form_layout_by_default_for_factorcl_ssl():
    assert isinstance(build_objective("factorcl_ssl", (4, 4)), ClosedFormFactorCLObjective)
    assert isinstance(build_objective("factorcl_ssl", (4, 4), estimators="tracked"), FactorCLObjective)
    with pytest.raises(ValueError, match="one representation"):
        build_objective("ourcl_ssl", (4, 4), estimators="closed_form")
    with pytest.raises(ValueError, match="closed_form layout"):
        FactorCLObjective((4, 4), supervised=False, estimators="closed_form")


def test_term_weights_of_terms_a_layout_does_not_compute_are_refused():
    with pytest.raises(ValueError, match="does not compute"):
        build_objective("factorcl_ssl", (4, 4), term_weights={"unique_club": 0.5})
    with pytest.raises(ValueError, match="does not compute"):
        build_objective("factorcl_ssl", (4, 4), estimators="paper", term_weights={"shared_alignment": 1.0})
    objective = build_objective("factorcl_ssl", (4, 4), term_weights={"shared_alignment": 0.0})
    assert objective.term_weights == {"shared_nce": 1.0, "shared_alignment": 0.0, "unique_label_nce_1": 1.0,
                                      "unique_label_nce_2": 1.0}


CAPTIONS = ["a red circle", "a blue square"]


def test_a_saved_fitted_model_gives_back_its_factorized_embeddings(tmp_path):
    model, processor = save_tiny_model(tmp_path / "unfitted", CAPTIONS)
    pixels = torch.rand(6, 3, 32, 32)
    tokens = processor(text=["a red circle"] * 3 + ["a blue square"] * 3, padding=True, return_tensors="pt")
    image = model.get_image_features(pixel_values=pixels).backbone_embeds
    text = model.get_text_features(**tokens).backbone_embeds
    model.fit_factorization(image, text)
    model.eval()
    before = model.get_image_features(pixel_values=pixels)
    model.save_pretrained(tmp_path)
    reloaded = FactorCLModel.from_pretrained(tmp_path).eval()
    after = reloaded.get_image_features(pixel_values=pixels)
    assert reloaded.objective.factorization_fitted
    assert torch.equal(before.shared_embeds, after.shared_embeds)
    assert torch.equal(before.unique_embeds, after.unique_embeds)


def test_fit_factorization_is_refused_for_objectives_without_it(tmp_path):
    model, _ = save_tiny_model(tmp_path, CAPTIONS, objective="simclr")
    with pytest.raises(ValueError, match="no closed-form factorization"):
        model.fit_factorization(torch.randn(4, 32), torch.randn(4, 32))
