"""FitConfig: DiScoFormer's settings in one validated dataclass, each switch skipping its fit step."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from disco_score import DiScoFormer, DiScoFormerMixture, DiScoFormerOracle, FitConfig
from disco_score.fit_stages import MIN_COMPONENT_SIZE, SPLIT_MIN_DIM


@pytest.fixture(scope="module")
def model() -> DiScoFormer:
    return DiScoFormer.pretrained(blend=False)  # steps 1-5; the blend (step 6): test_blend.py


@pytest.fixture(scope="module")
def two_clusters() -> torch.Tensor:
    """d = 6, n = 1000: two unit Gaussians 12 apart, which the component stage splits."""
    x = torch.randn(1000, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[:500, 0] += 12.0
    return x


@pytest.mark.parametrize("field, value, error", [
    ("key_block", 0, ValueError), ("query_block", 1.5, TypeError),
    ("convolution_threshold", 0.0, ValueError), ("convolution_threshold", "1", TypeError),
    ("split_min_dim", 0, ValueError), ("split_gate", 1.0, ValueError), ("split_gate", -0.1, ValueError),
    ("max_components", 0, ValueError), ("min_component_size", 1, ValueError),
    ("normalize", "yes", TypeError), ("split_components", None, TypeError), ("reassign", 1, TypeError),
    ("level_offsets", "no", TypeError), ("envelopes", 0.0, TypeError), ("summary", {"steps": 3}, TypeError),
])
def test_bad_values_raise_naming_the_field(field: str, value: object, error: type) -> None:
    with pytest.raises(error, match=field):
        FitConfig(**{field: value})
    with pytest.raises(error, match=field):  # replace validates again
        dataclasses.replace(FitConfig(), **{field: value})


def test_defaults_overrides_and_replace(model: DiScoFormer) -> None:
    cfg = model.config
    assert DiScoFormer.pretrained().config == FitConfig() and FitConfig().blend
    assert cfg == FitConfig(blend=False) and cfg.split_min_dim == SPLIT_MIN_DIM and cfg.min_component_size == MIN_COMPONENT_SIZE
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.envelopes = False  # type: ignore[misc]
    est = DiScoFormer(model.net, specialists=model.specialists, config=dataclasses.replace(cfg, reassign=False),
                      envelopes=False)  # keywords override the config's fields
    assert not est.config.reassign and not est.config.envelopes and est.config.normalize
    with pytest.raises(AttributeError, match="FitConfig"):  # a setting on the estimator would be ignored
        est.normalize = False
    with pytest.raises(TypeError, match="not_a_setting"):
        DiScoFormer.pretrained(not_a_setting=True)
    with pytest.raises(TypeError, match="config"):
        DiScoFormer(model.net, config={"envelopes": False})  # type: ignore[arg-type]
    assert FitConfig().min_part_size(100) == 202 and FitConfig().min_part_size(5) == MIN_COMPONENT_SIZE


def test_each_switch_skips_its_step(model: DiScoFormer, two_clusters: torch.Tensor, monkeypatch) -> None:
    x = two_clusters
    full = model.fit(x)
    assert isinstance(full, DiScoFormerMixture) and len(full.components) == 2 and full.envelopes is not None

    def variant(**overrides: object) -> DiScoFormer:
        return DiScoFormer(model.net, specialists=model.specialists, config=dataclasses.replace(model.config, **overrides))

    # split_components / split_min_dim / max_components: one component, one network fit
    for overrides in ({"split_components": False}, {"split_min_dim": 7}, {"max_components": 1}):
        est = variant(**overrides)
        assert len(est.components(x)) == 1
        assert isinstance(est.fit(x), DiScoFormerOracle)
    # envelopes: none built
    assert variant(envelopes=False).fit(x).envelopes is None
    # level offsets: the weights are the plain sample shares, and no reference fit runs
    est = variant(level_offsets=False)
    monkeypatch.setattr(est, "unimodal_level_offset", lambda n, d: pytest.fail("level offset computed"))
    plain = est.fit(x)
    torch.testing.assert_close(plain.log_weights, torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64)))
    offsets = torch.tensor([model.unimodal_level_offset(*c.samples.shape) for c in full.components],
                           dtype=torch.float64)
    torch.testing.assert_close(full.log_weights, plain.log_weights - offsets)
    # reassign: the search is the same, only the reassignment step is skipped
    calls = []
    import disco_score.fit_stages as stages
    original = stages.reassign_to_gaussians
    monkeypatch.setattr(stages, "reassign_to_gaussians", lambda *a, **k: calls.append(1) or original(*a, **k))
    variant(reassign=False).components(x)
    assert not calls
    model.components(x)
    assert calls == [1]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(key_block=st.integers(1, 10 ** 6), split_min_dim=st.integers(1, 200),
       split_gate=st.floats(1e-6, 0.999), min_component_size=st.integers(2, 10 ** 5),
       switches=st.lists(st.booleans(), min_size=5, max_size=5), d=st.integers(1, 500))
def test_valid_configs_round_trip(key_block: int, split_min_dim: int, split_gate: float, min_component_size: int,
                                  switches: list[bool], d: int) -> None:
    names = ("normalize", "split_components", "reassign", "level_offsets", "envelopes")
    cfg = FitConfig(key_block=key_block, split_min_dim=split_min_dim, split_gate=split_gate,
                    min_component_size=min_component_size, **dict(zip(names, switches)))
    assert dataclasses.replace(cfg) == cfg and FitConfig(**dataclasses.asdict(cfg)) == cfg
    assert cfg.min_part_size(d) >= max(2 * (d + 1), min_component_size)


# -- the network choice -------------------------------------------------------------------------
def test_heldout_hyvarinen_is_exact_for_a_known_score() -> None:
    # s(y) = -y (the standard normal): div s = -d, so the loss is mean |y|^2 / 2 - d at the scored points
    from disco_score.adaptation import CHOICE_POINTS, heldout_hyvarinen
    from disco_score.components import interleaved_subsets

    class _Exact:
        def score(self, y: torch.Tensor) -> torch.Tensor:
            return -y

    d = 3
    z = torch.randn(600, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = heldout_hyvarinen(lambda half: _Exact(), z)
    halves = interleaved_subsets(z, 2)
    scored = [z[h][:: max(1, len(h) // CHOICE_POINTS)][:CHOICE_POINTS] for h in halves]
    expected = sum(float((0.5 * (y ** 2).sum(1)).mean()) - d for y in scored) / 2
    assert got == pytest.approx(expected, rel=1e-9)


def test_network_choice_follows_the_score_error(model: DiScoFormer) -> None:
    # d = 10: on heavy tails (Student-t product, nu = 2) the general network wins and is chosen; on a
    # Gaussian mixture the d = 10 specialist (trained on mixtures) is chosen
    from disco_score import metrics
    from disco_score.targets import ProductStudentT, random_gmm

    if not model.specialists:
        pytest.skip("no specialist packaged")
    gen = torch.Generator().manual_seed(5)
    heavy = ProductStudentT(10, 2.0)
    x, y = heavy.sample(1024, gen), heavy.sample(256, gen)
    assert model.serving_network(x) is model.net
    fixed = dataclasses.replace(model.config, choose_network=False)
    chosen_err = metrics.relative_score_mse(model.fit(x).score(y), heavy.score(y))
    specialist_err = metrics.relative_score_mse(DiScoFormer(model.net, specialists=model.specialists,
                                                            config=fixed).fit(x).score(y), heavy.score(y))
    assert chosen_err < specialist_err
    mixture = random_gmm(10, generator=torch.Generator().manual_seed(1))
    assert model.serving_network(mixture.sample(512, gen)) is model.specialists[0].net
