"""cfd.schedule: SD's constants match diffusers; the timestep schedules."""
import math

import pytest
import torch

from cfd.schedule import (NoiseSchedule, annealed_timestep, scaled_linear_alphas_cumprod,
                          uniform_timestep)


def test_scaled_linear_matches_diffusers():
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    ours = scaled_linear_alphas_cumprod()
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    torch.testing.assert_close(ours, ref.double(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(NoiseSchedule.stable_diffusion().alphas_cumprod, ours)


def test_linear_config_matches_diffusers():
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    config = {"num_train_timesteps": 500, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
    ref = DDPMScheduler(**config).alphas_cumprod
    schedule = NoiseSchedule.from_scheduler_config(config)
    assert schedule.num_train_timesteps == 500
    torch.testing.assert_close(schedule.alphas_cumprod, ref.double(), atol=1e-6, rtol=1e-5)


def test_from_scheduler_config_sd_and_unsupported():
    sd = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
          "beta_schedule": "scaled_linear", "trained_betas": None, "prediction_type": "v_prediction"}
    torch.testing.assert_close(NoiseSchedule.from_scheduler_config(sd).alphas_cumprod,
                               scaled_linear_alphas_cumprod())
    with pytest.raises(ValueError, match="squaredcos_cap_v2"):
        NoiseSchedule.from_scheduler_config({**sd, "beta_schedule": "squaredcos_cap_v2"})


def test_alpha_sigma_lambda():
    s = NoiseSchedule.stable_diffusion()
    t = torch.tensor([[0, 20], [500, 999]])
    alpha, sigma, lam = s.alpha(t), s.sigma(t), s.lam(t)
    for value in (alpha, sigma, lam):
        assert value.shape == (2, 2) and value.dtype == torch.float32
    torch.testing.assert_close(alpha ** 2 + sigma ** 2, torch.ones(2, 2))
    torch.testing.assert_close(lam, sigma / alpha)
    assert s.alpha(500).shape == () and s.alpha(500).item() == pytest.approx(alpha[1, 0].item())
    assert (lam.flatten().diff() > 0).all()  # noise-to-signal grows with t
    with pytest.raises(ValueError):
        s.alpha(1000)


def test_annealed_default_endpoints_and_monotone():
    ts = [annealed_timestep(k / 1000) for k in range(1001)]
    assert ts[0] == 980 and ts[-1] == 20 and ts[500] == 500
    assert all(isinstance(t, int) for t in ts)
    assert all(b <= a for a, b in zip(ts, ts[1:]))


def test_annealed_hits_every_knot():
    knots = ((0.0, 980), (0.25, 700), (0.6, 700), (0.9, 300))
    for p, t in knots:
        assert annealed_timestep(p, knots) == t
    ts = [annealed_timestep(k / 997, knots) for k in range(998)]
    assert all(b <= a for a, b in zip(ts, ts[1:]))
    assert annealed_timestep(0.95, knots) == 300  # constant after the last knot
    assert annealed_timestep(0.4, knots) == 700


@pytest.mark.parametrize("knots", [(), ((0.5, 900), (0.2, 100)), ((0.0, 100), (1.0, 900)),
                                   ((0.0, 900), (0.0, 800)), ((0.0, 900), (1.5, 100)),
                                   ((0.0, 10), (1.0, -5))])
def test_annealed_rejects_bad_knots(knots):
    with pytest.raises(ValueError):
        annealed_timestep(0.5, knots)


def test_annealed_rejects_bad_progress():
    with pytest.raises(ValueError):
        annealed_timestep(1.01)


def test_uniform_timestep():
    draws = [uniform_timestep(torch.Generator().manual_seed(s)) for s in range(50)]
    assert all(20 <= t <= 980 for t in draws) and len(set(draws)) > 40
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [uniform_timestep(g1) for _ in range(5)] == [uniform_timestep(g2) for _ in range(5)]
    g = torch.Generator().manual_seed(0)
    assert {uniform_timestep(g, 5, 7) for _ in range(200)} == {5, 6, 7}  # both ends inclusive
    with pytest.raises(ValueError):
        uniform_timestep(g, 10, 5)


def test_gamma_schedule_constant_knots_and_rescaling():
    from cfd.schedule import AUTHORS_SD_GAMMA_KNOTS, GammaSchedule

    const = GammaSchedule(0.01, steps=100)
    assert const.gamma(1) == const.gamma(77) == 0.01
    assert math.isclose(const.correlation(3, 13), 0.99 ** 5, rel_tol=1e-12)
    assert GammaSchedule(0.01, steps=100, reference_steps=25_000).gamma(5) == 0.01   # a constant is per step
    s = GammaSchedule(AUTHORS_SD_GAMMA_KNOTS, steps=1000)
    assert math.isclose(s.gamma(100), 0.01) and math.isclose(s.gamma(200), 0.01)
    assert math.isclose(s.gamma(300), (0.01 + 1e-4) / 2) and math.isclose(s.gamma(400), 1e-4)
    assert math.isclose(s.gamma(1000), 1e-4) and math.isclose(s.gamma(5000), 1e-4)   # the last rate goes on
    scaled = GammaSchedule(AUTHORS_SD_GAMMA_KNOTS, steps=50, reference_steps=25_000)
    assert math.isclose(-math.log1p(-scaled.gamma(30)), -math.log1p(-1e-4) * 500, rel_tol=1e-9)
    # rescaled, the correlation over a fraction of the run hardly depends on N
    for n in (50, 200, 1000):
        other = GammaSchedule(AUTHORS_SD_GAMMA_KNOTS, steps=n, reference_steps=25_000)
        assert math.isclose(other.correlation(int(0.4 * n), n), math.exp(-0.5 * 1.5), rel_tol=1e-3)
    with pytest.raises(ValueError, match="must lie in \\(0, 1\\)"):
        GammaSchedule(((0.0, 0.01), (1.0, 0.0)), steps=10)
    with pytest.raises(ValueError, match="strictly increasing"):
        GammaSchedule(((0.5, 0.01), (0.5, 0.02)), steps=10)
    with pytest.raises(ValueError, match="gamma=1.5"):
        GammaSchedule(1.5, steps=10)


def test_sd_preset_uses_the_authors_knots_at_any_length():
    from cfd.distill import AnnealedTime, DistillConfig
    from cfd.schedule import AUTHORS_SD_GAMMA_KNOTS, AUTHORS_SD_T_KNOTS

    config = DistillConfig.for_stable_diffusion()
    assert config.t_knots == AUTHORS_SD_T_KNOTS == ((0.0, 980), (0.1, 692), (0.5, 404), (1.0, 212))
    assert config.gamma == AUTHORS_SD_GAMMA_KNOTS and config.gamma_reference_steps == 25_000
    times = AnnealedTime(config.t_knots)
    assert [times(k, 1001) for k in (0, 100, 500, 1000)] == [980, 692, 404, 212]
    for steps in (50, 1000):
        short = DistillConfig.for_stable_diffusion(steps=steps)
        ts = [AnnealedTime(short.t_knots)(k, steps) for k in range(steps)]
        assert ts[0] == 980 and ts[-1] == 212 and ts == sorted(ts, reverse=True)
        assert short.densify_every == max(1, steps // 10)
    # γ: rescaled to the run, the noise at 40 % of any run correlates exp(−0.75) with the end
    for steps in (50, 1000):
        sched = DistillConfig.for_stable_diffusion(steps=steps).gamma_schedule()
        assert math.isclose(sched.correlation(int(0.4 * steps), steps), math.exp(-0.75), rel_tol=1e-3)
    assert DistillConfig.for_stable_diffusion(gamma=1e-3).gamma_schedule().gamma(10) == 1e-3
    with pytest.raises(ValueError, match="gamma knot values"):
        DistillConfig(gamma=((0.0, 0.01), (1.0, 2.0)))
