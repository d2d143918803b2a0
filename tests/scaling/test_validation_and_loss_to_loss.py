"""Train on small, test on large; and the shifted power law between two losses."""

import numpy as np
import pytest

from descentlab.scaling import SmallLargeSplit, fit_chinchilla, fit_loss_to_loss, held_out_validation, start_grid

GRID = start_grid(alpha=(0.5, 1.5), beta=(0.5, 1.5), e=(0.0,), a=(5.0, 15.0), b=(5.0, 15.0))


def test_split_holds_out_the_largest_runs_and_ties():
    size = np.array([5.0, 1.0, 9.0, 3.0, 9.0, 7.0])
    train, test = SmallLargeSplit(n_test=1).split(size)
    assert sorted(test) == [2, 4] and sorted(train) == [0, 1, 3, 5]  # the tie at 9 goes to the test side
    train, test = SmallLargeSplit(test_fraction=0.5).split(size)
    assert sorted(test) == [2, 4, 5] and size[train].max() < size[test].min()
    with pytest.raises(ValueError, match="exactly one of"):
        SmallLargeSplit()
    with pytest.raises(ValueError, match="leaves nothing to fit"):
        SmallLargeSplit(n_test=6).split(size)


def test_held_out_chinchilla_predicts_the_largest_runs(synthetic_chinchilla):
    N, D, L = synthetic_chinchilla(np.random.default_rng(3), 120, noise=0.003)
    C = 6 * N * D
    result = held_out_validation(lambda N, D, loss: fit_chinchilla(N, D, loss, starts=GRID), {"N": N, "D": D}, L,
                                 size=C, split=SmallLargeSplit(n_test=12))
    assert C[result.test_index].min() > C[result.train_index].max()
    summary = result.summary()
    assert summary["n_train"] == 108 and summary["n_test"] == 12
    assert summary["mean_abs_relative_error"] < 0.01  # the noise is 0.3%
    # A law fitted to the wrong runs' losses (shuffled) does not predict them: the check can fail.
    shuffled = held_out_validation(lambda N, D, loss: fit_chinchilla(N, D, loss, starts=GRID), {"N": N, "D": D},
                                   np.random.default_rng(0).permutation(L), size=C, split=SmallLargeSplit(n_test=12))
    assert shuffled.summary()["mean_abs_relative_error"] > 3 * summary["mean_abs_relative_error"]
    assert list(result.to_table().columns) == ["run", "observed", "predicted", "relative_error"]


K, KAPPA, E0, E1 = 1.3, 1.2, 1.0, 2.0


def test_loss_to_loss_recovers_the_shifted_power_law():
    l0 = np.geomspace(1.6, 4.0, 25)
    fit = fit_loss_to_loss(l0, K * (l0 - E0) ** KAPPA + E1)
    assert (fit.K, fit.kappa, fit.E0, fit.E1) == pytest.approx((K, KAPPA, E0, E1), rel=1e-6)
    with pytest.raises(ValueError, match=r"loss0\[0\] = 0.9 is not above"):
        fit.predict([0.9])


@pytest.mark.parametrize("seed", range(5))
def test_loss_to_loss_fitted_on_small_models_predicts_the_largest(seed):
    # With E0, E1 known (in practice: from each distribution's own scaling-law fit), K and kappa are fitted.
    l0 = np.geomspace(1.6, 4.0, 25)  # larger models have lower loss
    clean = K * (l0 - E0) ** KAPPA + E1
    l1 = clean * np.exp(np.random.default_rng(seed).normal(0.0, 0.002, l0.size))
    result = held_out_validation(lambda loss0, loss: fit_loss_to_loss(loss0, loss, E0=E0, E1=E1), {"loss0": l0}, l1,
                                 size=1.0 / l0, split=SmallLargeSplit(n_test=5))
    assert set(result.test_index) == {0, 1, 2, 3, 4}
    assert (result.fit.E0, result.fit.E1) == (E0, E1)
    assert result.fit.kappa == pytest.approx(KAPPA, rel=0.05)
    np.testing.assert_allclose(result.predicted, clean[result.test_index], rtol=0.01)


def test_loss_to_loss_with_free_offsets_fits_noisy_data_within_its_range():
    l0 = np.geomspace(1.6, 4.0, 25)
    clean = K * (l0 - E0) ** KAPPA + E1
    l1 = clean * np.exp(np.random.default_rng(0).normal(0.0, 0.002, l0.size))
    fit = fit_loss_to_loss(l0, l1)
    np.testing.assert_allclose(fit.predict(l0), clean, rtol=0.01)
    assert fit.convergence.n_at_best >= 2


def test_loss_to_loss_names_bad_input():
    with pytest.raises(ValueError, match="at least 5"):
        fit_loss_to_loss([3.0, 2.5, 2.2, 2.0], [3.1, 2.6, 2.3, 2.1])
    with pytest.raises(ValueError, match=r"loss1 must be finite: loss1\[1\] = inf"):
        fit_loss_to_loss([3.0, 2.5, 2.2, 2.0, 1.9], [3.1, np.inf, 2.3, 2.1, 2.0])
    with pytest.raises(ValueError, match=r"E0 must lie in \(0, min\(loss0\) = 1.9\), got 1.95"):
        fit_loss_to_loss([3.0, 2.5, 2.2, 2.0, 1.9], [3.1, 2.6, 2.3, 2.1, 2.0], E0=1.95)
