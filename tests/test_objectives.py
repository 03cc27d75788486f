import math

import pytest
import torch
import torch.nn.functional as F

from factorcl_hf import FactorCLConfig
from factorcl_hf.configuration_factorcl import OBJECTIVE_REGISTRY
from factorcl_hf.hub import _embedding_sizes
from factorcl_hf.objectives import OBJECTIVES, UNIQUE_COND, build_objective, supervised_contrastive_loss, train_club_critics

B, D1, D2, L = 8, 12, 10, 3
# The paper's concat alignment critic: the loop reference below computes its one-directional InfoNCE.
SMALL = dict(head_dim=6, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8, alignment_critic_type="concat")


def make_batch(seed=0, batch=B):
    g = torch.Generator().manual_seed(seed)
    f1, f2 = torch.randn(batch, D1, generator=g), torch.randn(batch, D2, generator=g)
    return dict(
        features_1=f1,
        features_2=f2,
        labels=torch.randint(0, L, (batch,), generator=g),
        augmented_1=f1 + 0.1 * torch.randn(batch, D1, generator=g),
        augmented_2=f2 + 0.1 * torch.randn(batch, D2, generator=g),
    )


# ---- an independent, loop-based computation of the FactorCL terms -----------------------
def pairwise(critic, x, y):
    return torch.stack([torch.stack([critic.score_pairs(x[i : i + 1], y[j : j + 1])[0] for j in range(len(y))]) for i in range(len(x))])


def naive_infonce(s):
    n = len(s)
    return sum(s[i, i] - (torch.log(sum(torch.exp(s[i, j]) for j in range(n))) - math.log(n)) for i in range(n)) / n


def naive_club(s):
    n = len(s)
    return sum(s[i, i] for i in range(n)) / n - sum(s[i, j] for i in range(n) for j in range(n)) / n**2


def naive_conditional_infonce(s, w):
    """InfoNCE whose row i draws its negatives with probabilities w[i, :]."""
    n = len(s)
    return sum(s[i, i] - torch.log(sum(w[i, j] * torch.exp(s[i, j]) for j in range(n))) for i in range(n)) / n


def naive_conditional_club(s, w):
    n = len(s)
    return sum(s[i, i] - sum(w[i, j] * s[i, j] for j in range(n)) for i in range(n)) / n


def naive_negative_weights(supervised, labels, condition):
    """Class negatives (same label, uniform) or Gaussian-kernel negatives, median-distance bandwidth."""
    n = len(labels)
    if supervised:
        return torch.tensor([[float(labels[j] == labels[i]) / int((labels == labels[i]).sum()) for j in range(n)]
                             for i in range(n)])
    condition = condition.detach()
    squared = [float(((condition[i] - condition[j]) ** 2).sum()) for i in range(n) for j in range(n) if i != j]
    h = math.sqrt(torch.tensor(squared).median().item() / 2)
    k = torch.tensor([[math.exp(-float(((condition[i] - condition[j]) ** 2).sum()) / (2 * h**2)) for j in range(n)]
                      for i in range(n)])
    return k / k.sum(1, keepdim=True)


def reference_factorcl_loss(obj, batch, supervised, estimators="paper"):
    feats = (batch["features_1"], batch["features_2"])
    normalize = estimators == "tracked"
    heads = [{r: obj.heads[m].heads[r](feats[m]) for r in obj.roles} for m in range(2)]
    for m in range(2):
        for r in ("shared_cond", "unique"):
            heads[m][r] = F.normalize(heads[m][r], dim=1) if normalize else heads[m][r]
    if supervised:
        y = F.one_hot(batch["labels"], L).float()
        cond = [{r: y for r in obj.roles}] * 2
    else:
        augs = (batch["augmented_1"], batch["augmented_2"])
        cond = [{r: obj.heads[m].heads[r](augs[m]) for r in obj.roles} for m in range(2)]
        for m in range(2):
            cond[m]["shared_cond"] = F.normalize(cond[m]["shared_cond"], dim=1) if normalize else cond[m]["shared_cond"]
    cat = lambda m, r: torch.cat([heads[m][r], cond[m][r]], 1)  # noqa: E731
    i_shared = naive_infonce(pairwise(obj.alignment_critic, heads[0]["shared"], heads[1]["shared"]))
    club_unique = naive_club(pairwise(obj.club_unique.critic, heads[0]["unique"], heads[1]["unique"]))
    i_label = [
        naive_infonce(pairwise(obj.label_critics[m], heads[m]["unique_label"], cond[m]["unique_label"])) for m in range(2)
    ]
    if estimators == "paper":
        club_cond = naive_club(pairwise(obj.club_shared_cond.critic, cat(0, "shared_cond"), cat(1, "shared_cond")))
        i_cond = naive_infonce(pairwise(obj.unique_cond_critic, cat(0, "unique_cond"), cat(1, "unique_cond")))
    else:  # conditioning by negatives: ([a; c], b), negatives of the same or a nearby condition
        terms = []
        for r, critic in (("shared_cond", obj.club_shared_cond.critic), ("unique_cond", obj.unique_cond_critic)):
            both = torch.cat([cond[0][r], cond[1][r]], 1)
            w = naive_negative_weights(supervised, batch["labels"], both)
            s = pairwise(critic, cat(0, r) if supervised else torch.cat([heads[0][r], cond[0][r]], 1), heads[1][r])
            terms.append((s, w))
        club_cond = naive_conditional_club(*terms[0])
        i_cond = naive_conditional_infonce(*terms[1])
    return -i_shared + club_cond + club_unique - i_label[0] - i_label[1] - i_cond


@pytest.mark.parametrize("estimators", ["paper", "tracked"])
@pytest.mark.parametrize("name", ["factorcl_sup", "factorcl_ssl"])
def test_factorcl_loss_matches_loop_reference(name, estimators):
    torch.manual_seed(0)
    obj = build_objective(name, (D1, D2), num_labels=L, estimators=estimators, **SMALL)
    batch = make_batch()
    out = obj(**batch)
    expected = reference_factorcl_loss(obj, batch, supervised=name.endswith("sup"), estimators=estimators)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    terms = out.loss_terms
    recomposed = (
        -terms["shared_nce"] + terms["shared_cond_club"] + terms["unique_club"]
        - terms["unique_label_nce_1"] - terms["unique_label_nce_2"] - terms["unique_cond_nce"]
    )
    torch.testing.assert_close(recomposed, out.loss.detach())


def test_club_gradients_stop_at_the_club_heads_with_the_tracked_estimators():
    torch.manual_seed(0)
    batch = {k: v.requires_grad_() if k.startswith("features") else v for k, v in make_batch().items()}
    obj = build_objective("factorcl_sup", (D1, D2), num_labels=L, estimators="tracked", **SMALL)
    out = obj(**batch)
    club = out.loss_terms  # detached; recompute the CLUB terms with graphs
    heads = obj.heads[0](batch["features_1"]), obj.heads[1](batch["features_2"])
    unique_club = obj.club_unique(heads[0]["unique"], heads[1]["unique"])
    grads = torch.autograd.grad(unique_club, [batch["features_1"], *obj.heads[0].heads["unique"].parameters()],
                                allow_unused=True)
    assert grads[0] is None  # the backbone features get nothing from a CLUB term
    assert all(g is not None and g.abs().sum() > 0 for g in grads[1:])  # the CLUB head does
    torch.testing.assert_close(unique_club.detach(), club["unique_club"])
    paper = build_objective("factorcl_sup", (D1, D2), num_labels=L, estimators="paper", **SMALL)
    heads = paper.heads[0](batch["features_1"]), paper.heads[1](batch["features_2"])
    grad = torch.autograd.grad(paper.club_unique(heads[0]["unique"], heads[1]["unique"]), batch["features_1"])[0]
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("critic_type", ["concat", "separable"])
@pytest.mark.parametrize("batch", [B, 2])  # 2 < L: every row is scored against the batch's labels
def test_sup_label_scores_equal_the_all_pairs_scores_with_one_hot_labels(critic_type, batch):
    torch.manual_seed(0)
    obj = build_objective("factorcl_sup", (D1, D2), num_labels=L, critic_type=critic_type, **SMALL)
    features = torch.randn(batch, SMALL["head_dim"], requires_grad=True)
    labels = torch.randint(0, L, (batch,), generator=torch.Generator().manual_seed(1))
    one_hot = F.one_hot(labels, L).float()
    critic = obj.label_critics[0]
    fast = obj._label_scores(0, features, one_hot, labels)
    full = critic(features, one_hot)
    torch.testing.assert_close(fast, full, rtol=1e-6, atol=1e-6)
    params = [features, *critic.parameters()]
    fast_grads = torch.autograd.grad(fast.logsumexp(1).sum(), params)
    full_grads = torch.autograd.grad(full.logsumexp(1).sum(), params)
    for a, b in zip(fast_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ssl_club_critic_is_trained_and_evaluated_on_the_same_conditioning():
    torch.manual_seed(0)
    obj = build_objective("factorcl_ssl", (D1, D2), estimators="paper", **SMALL)
    batch = make_batch()
    out = obj(**batch)
    for m, (feat, aug) in enumerate([("features_1", "augmented_1"), ("features_2", "augmented_2")]):
        head = obj.heads[m].heads["shared_cond"]
        expected = torch.cat([head(batch[feat]), head(batch[aug])], 1)
        torch.testing.assert_close(out.critic_inputs["shared_cond"][m], expected)
    # The CLUB term evaluates the critic on exactly the pairs it is trained on.
    x, y = out.critic_inputs["shared_cond"]
    torch.testing.assert_close(out.loss_terms["shared_cond_club"], obj.club_shared_cond(x, y).detach())


def test_simclr_is_the_clip_loss_minus_log_batch():
    torch.manual_seed(0)
    obj = build_objective("simclr", (D1, D2), temperature=0.5, **SMALL)
    batch = make_batch()
    out = obj(**batch)
    z1 = F.normalize(obj.represent(batch["features_1"], 0).alignment, dim=-1)
    z2 = F.normalize(obj.represent(batch["features_2"], 1).alignment, dim=-1)
    logits = z1 @ z2.T / 0.5
    target = torch.arange(B)
    clip_loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    torch.testing.assert_close(out.loss, clip_loss - math.log(B))


def test_supcon_matches_loop_definition():
    torch.manual_seed(0)
    z, labels, tau = torch.randn(10, 4), torch.tensor([0, 1, 0, 2, 1, 0, 1, 2, 2, 0]), 0.3
    zn = F.normalize(z, dim=-1)
    losses = []
    for i in range(10):
        positives = [p for p in range(10) if p != i and labels[p] == labels[i]]
        denom = torch.log(sum(torch.exp(zn[i] @ zn[a] / tau) for a in range(10) if a != i))
        losses.append(-sum(zn[i] @ zn[p] / tau - denom for p in positives) / len(positives))
    torch.testing.assert_close(supervised_contrastive_loss(z, labels, tau), torch.stack(losses).mean())


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_gradients_and_training(name):
    torch.manual_seed(0)
    obj = build_objective(name, (D1, D2), num_labels=L, **SMALL)
    batch = make_batch()
    out = obj(**batch)
    assert torch.isfinite(out.loss)
    assert out.representations[0].shared.shape[0] == B
    out.loss.backward()
    # A term weighed 0 (FactorCL-SSL's default drops term 6) trains neither its heads nor its
    # critic: their gradients are zeros (not None, so distributed training sees them used).
    dropped = [term for term, weight in getattr(obj, "term_weights", {}).items() if weight == 0]
    idle = {id(p) for m in obj.heads for p in m.heads[UNIQUE_COND].parameters()} if dropped else set()
    idle |= {id(p) for p in obj.unique_cond_critic.parameters()} if dropped else set()
    assert dropped == (["unique_cond_nce"] if getattr(obj, "estimators", None) == "tracked_no_cond_nce" else [])
    for p in obj.main_parameters():
        assert p.grad is not None and (p.grad.abs().sum() > 0) == (id(p) not in idle)
    for p in obj.club_critic_parameters():
        assert p.grad is None, "the main loss must not train the CLUB critics"
    if out.critic_loss is not None:
        obj.zero_grad(set_to_none=True)
        out.critic_loss.backward()
        assert all(p.grad is not None for p in obj.club_critic_parameters())
        assert all(p.grad is None for p in obj.main_parameters())

    main = torch.optim.Adam(obj.main_parameters(), lr=1e-2)
    critics = obj.club_critic_parameters()
    critic_opt = torch.optim.Adam(critics, lr=1e-2) if critics else None
    first = obj(**batch).loss.item()
    for _ in range(30):
        out = obj(**batch)
        main.zero_grad()
        out.loss.backward()
        main.step()
        if critic_opt:
            train_club_critics(obj, out.critic_inputs, critic_opt, steps=1)
    assert obj(**batch).loss.item() < first


def test_train_club_critics_improves_critics_only():
    torch.manual_seed(0)
    obj = build_objective("factorcl_sup", (D1, D2), num_labels=L, **SMALL)
    out = obj(**make_batch())
    main_before = [p.detach().clone() for p in obj.main_parameters()]
    opt = torch.optim.Adam(obj.club_critic_parameters(), lr=1e-2)
    losses = train_club_critics(obj, out.critic_inputs, opt, steps=20)
    assert len(losses) == 20 and losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(main_before, obj.main_parameters()))


def test_factorized_embedding_layout():
    obj = build_objective("factorcl_sup", (D1, D2), num_labels=L, **SMALL)
    rep = obj.represent(make_batch()["features_1"], 0)
    assert rep.shared.shape == (B, 2 * SMALL["head_dim"]) and rep.unique.shape == (B, 3 * SMALL["head_dim"])
    assert rep.factorized.shape == (B, 5 * SMALL["head_dim"])
    torch.testing.assert_close(rep.alignment, rep.shared[:, : SMALL["head_dim"]])
    # The OurCL ablation has one representation per modality.
    ourcl = build_objective("ourcl_sup", (D1, D2), num_labels=L, **SMALL)
    assert ourcl.represent(make_batch()["features_1"], 0).unique is None


@pytest.mark.parametrize(
    "name,change,match",
    [
        ("factorcl_sup", dict(features_1=torch.randn(1, D1), features_2=torch.randn(1, D2), labels=torch.tensor([0])), "batch size 1"),
        ("factorcl_sup", dict(features_2=torch.randn(B + 1, D2)), "`features_2`.*batch size"),
        ("factorcl_sup", dict(features_1=torch.randn(B, D1 + 1)), "`features_1`.*12 features"),
        ("factorcl_sup", dict(labels=torch.full((B,), L)), "`labels` must be in"),
        ("factorcl_sup", dict(labels=-torch.ones(B, dtype=torch.long)), "`labels` must be in"),
        ("factorcl_sup", dict(labels=None), "`labels` are required"),
        ("supcon", dict(labels=None), "`labels` are required"),
        ("factorcl_ssl", dict(augmented_2=None), "`augmented_2` is required"),
        ("cross_self", dict(augmented_1=None), "`augmented_1` is required"),
        ("simclr", dict(features_1=torch.full((B, D1), float("nan"))), "`features_1`.*NaN"),
    ],
)
def test_bad_inputs(name, change, match, monkeypatch):
    # Value checks (labels in range, finite features: a device sync each) need FACTORCL_DEBUG.
    monkeypatch.setenv("FACTORCL_DEBUG", "1")
    obj = build_objective(name, (D1, D2), num_labels=L, **SMALL)
    batch = {**make_batch(), **change}
    with pytest.raises(ValueError, match=match):
        obj(**batch)


def test_values_are_checked_only_with_the_debug_switch(monkeypatch):
    """Without FACTORCL_DEBUG the objective reads no value of its inputs (the data path checks
    labels; non-finite features give a non-finite loss, which training stops on)."""
    monkeypatch.delenv("FACTORCL_DEBUG", raising=False)
    obj = build_objective("simclr", (D1, D2), num_labels=L, **SMALL)
    assert not torch.isfinite(obj(**{**make_batch(), "features_1": torch.full((B, D1), float("nan"))}).loss)
    monkeypatch.setenv("FACTORCL_DEBUG", "0")
    assert not torch.isfinite(obj(**{**make_batch(), "features_1": torch.full((B, D1), float("nan"))}).loss)
    monkeypatch.setenv("FACTORCL_DEBUG", "1")
    with pytest.raises(ValueError, match="`features_1` contains NaN"):
        obj(**{**make_batch(), "features_1": torch.full((B, D1), float("nan"))})


def test_unknown_objective_and_missing_num_labels():
    with pytest.raises(ValueError, match="`objective` must be one of"):
        build_objective("clip", (D1, D2))
    with pytest.raises(ValueError, match="`num_labels`"):
        build_objective("factorcl_sup", (D1, D2))


@pytest.mark.parametrize("name", OBJECTIVES)
def test_club_estimators_list_every_club_critic(name):
    """The critics' own optimizer gets exactly the parameters of every NCE-CLUB module."""
    from factorcl_hf.estimators import NCECLUBEstimator

    obj = build_objective(name, (D1, D2), num_labels=L, **SMALL)
    every = {id(p) for m in obj.modules() if isinstance(m, NCECLUBEstimator) for p in m.parameters()}
    assert {id(p) for p in obj.club_critic_parameters()} == every
    if not every:
        assert obj.critic_loss({}) is None


@pytest.mark.parametrize("name", OBJECTIVES)
def test_the_registry_declares_what_each_objective_does(name):
    """The registry (read by the config, the training script and the model card) against the
    objective's behaviour: the inputs it refuses to run without, and whether it factorizes."""
    spec = OBJECTIVE_REGISTRY[name]
    assert spec.name == name
    obj = build_objective(name, (D1, D2), num_labels=L, **SMALL)
    batch = make_batch()
    obj(**batch)
    for key, declared in (("labels", spec.supervised), ("augmented_1", spec.augmented_views)):
        if declared:
            with pytest.raises(ValueError, match=f"`{key}`.* required"):
                obj(**{**batch, key: None})
        else:
            obj(**{**batch, key: None})
    representation = obj.represent(batch["features_1"], 0)
    assert (representation.unique is not None) == spec.factorized
    # The sizes the model card lists.
    sizes = _embedding_sizes(FactorCLConfig(objective=name, head_dim=SMALL["head_dim"], num_labels=L))
    assert sizes["shared_dim"] == representation.shared.shape[1]
    assert sizes["unique_dim"] == (0 if representation.unique is None else representation.unique.shape[1])
    assert sizes["factorized_dim"] == representation.factorized.shape[1]
