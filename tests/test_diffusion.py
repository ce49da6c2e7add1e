"""Exact checks of the diffusion maths with the closed-form oracle denoiser.

For y0 ~ N(mu, s^2) the optimal denoiser is linear in y_t, so every sampler maps the
Gaussian y_T to a Gaussian whose mean and variance can be propagated exactly
(``chain_law``). Sampled moments must match that law to sampling error; the law itself
must match (mu, s) up to the sampler's discretization error, which is reported.
"""

import math

import pytest
import torch

from skdiffusion.diffusion import (NoiseSchedule, ddim_sample, ddim_timesteps, ddpm_sample,
                                   ddpm_timesteps, draw_noise, n_noise_draws, sample)

N = 40_000
Z = 5.0  # sigmas of sampling error allowed


def oracle(schedule, mu, s, prediction_type):
    """E[eps | y_t] for y0 ~ N(mu, s^2), converted to ``prediction_type``."""
    def denoise(y, t):
        ab = schedule.abar[t].item()
        eps = math.sqrt(1 - ab) * (y - math.sqrt(ab) * mu) / (ab * s * s + 1 - ab)
        y0 = (y - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        return {"epsilon": eps, "sample": y0,
                "v": math.sqrt(ab) * eps - math.sqrt(1 - ab) * y0}[prediction_type]
    return denoise


def _oracle_affine(schedule, t, mu, s):
    """y0_hat = m0 + g * y_t for the oracle."""
    ab = schedule.abar[t].item()
    g = math.sqrt(ab) * s * s / (ab * s * s + 1 - ab)
    return mu - g * math.sqrt(ab) * mu, g


def chain_law(schedule, mu, s, sampler, n_steps=None, eta=0.0, variance="beta_tilde",
              start=(0.0, 1.0), data_var=False):
    """Exact (mean, std) of a sampler's output with the oracle denoiser, y_T ~ N(start)
    (the sampler's N(0, 1) by default); ``data_var``: the DDPM sampler is given the data
    variance s^2, so its last step adds Var(y0 | y_t)."""
    m, v = start
    if sampler == "ddpm":
        steps = ddpm_timesteps(schedule.timesteps, n_steps or schedule.timesteps)
        for t, tp in zip(steps, steps[1:] + [0]):
            m0, g = _oracle_affine(schedule, t, mu, s)
            ab, abp = schedule.abar[t].item(), schedule.abar[tp].item()
            beta = 1 - ab / abp  # of the stride t -> tp
            c1 = beta * math.sqrt(abp) / (1 - ab)
            c2 = (1 - abp) * math.sqrt(1 - beta) / (1 - ab)
            m, v = c1 * m0 + (c1 * g + c2) * m, (c1 * g + c2) ** 2 * v
            if variance == "analytic" or (tp == 0 and data_var):  # beta_tilde + c1^2 Var(y0 | y_t)
                v += beta * (1 - abp) / (1 - ab) + c1**2 * s * s * (1 - ab) / (ab * s * s + 1 - ab)
            elif tp > 0:
                v += beta * (1 - abp) / (1 - ab) if variance == "beta_tilde" else beta
        return m, math.sqrt(v)
    steps = ddim_timesteps(schedule.timesteps, n_steps)
    for i, t in enumerate(steps):
        tp = steps[i + 1] if i + 1 < len(steps) else 0
        m0, g = _oracle_affine(schedule, t, mu, s)
        ab, abp = schedule.abar[t].item(), schedule.abar[tp].item()
        sig = eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)
        c = math.sqrt(max(1 - abp - sig**2, 0.0))
        k = math.sqrt(abp) - c * math.sqrt(ab) / math.sqrt(1 - ab)
        a = k * g + c / math.sqrt(1 - ab)
        m, v = k * m0 + a * m, a * a * v + sig**2
    return m, math.sqrt(v)


def run(schedule, mu, s, ptype, sampler, n_steps=None, eta=0.0, variance="beta_tilde", seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = draw_noise(n_noise_draws(schedule, n_steps), (N,), g, torch.float64)
    y0_var = torch.tensor(s * s, dtype=torch.float64) if variance == "analytic" else None
    return sample(oracle(schedule, mu, s, ptype), schedule, noise, sampler, n_steps, eta,
                  ptype, variance, y0_var=y0_var)


def assert_moments(y, mean, std):
    """Sample moments vs a Gaussian law, Z standard errors (SE(std) = std / sqrt(2N))."""
    assert abs(y.mean().item() - mean) < Z * std / math.sqrt(N)
    assert abs(y.std().item() - std) < Z * std / math.sqrt(2 * N)


CASES = [(0.5, 0.05), (-1.0, 3.0), (2.0, 1.0)]
PTYPES = ["epsilon", "v", "sample"]


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("T", [10, 100, 1000])
def test_schedules_are_noise_complete(kind, T):
    sch = NoiseSchedule(T, kind)
    assert sch.abar[-1] < 1e-3
    assert torch.all(sch.betas[1:] > 0) and torch.all(sch.betas[1:] < 1)
    assert torch.all(sch.abar[1:] < sch.abar[:-1])  # strictly decreasing


def test_schedule_validation():
    with pytest.raises(ValueError, match="timesteps"):
        NoiseSchedule(5)
    with pytest.raises(ValueError, match="schedule"):
        NoiseSchedule(100, "quadratic")


def test_q_sample_moments_per_element_t():
    sch = NoiseSchedule(100)
    t = torch.tensor([1, 50, 100]).repeat(N)
    y0 = torch.full(t.shape, 2.0, dtype=torch.float64)
    eps = torch.randn(t.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    yt = sch.q_sample(y0, t, eps).reshape(N, 3)
    for j, tj in enumerate([1, 50, 100]):
        ab = sch.abar[tj].item()
        assert_moments(yt[:, j], 2.0 * math.sqrt(ab), math.sqrt(1 - ab))


@pytest.mark.parametrize("ptype", PTYPES)
def test_parameterizations_round_trip(ptype):
    sch = NoiseSchedule(100)
    g = torch.Generator().manual_seed(0)
    y0, eps = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    t = torch.randint(1, 101, (1000,), generator=g)
    yt = sch.q_sample(y0, t, eps)
    y0_hat, eps_hat = sch.to_y0_eps(sch.target(y0, eps, t, ptype), yt, t, ptype)
    torch.testing.assert_close(y0_hat, y0, rtol=0, atol=1e-6)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-6)


def test_ddim_trailing_timesteps():
    assert ddim_timesteps(100, 4) == [100, 75, 50, 25]
    assert ddim_timesteps(200, 200) == list(range(200, 0, -1))
    with pytest.raises(ValueError):
        ddim_timesteps(100, 101)


@pytest.mark.parametrize("ptype", PTYPES)
@pytest.mark.parametrize("mu,s", CASES)
@pytest.mark.parametrize("T,S,variance", [(200, None, "beta_tilde"), (200, None, "beta"),
                                          (1000, None, "beta_tilde"), (200, 10, "beta_tilde"),
                                          (50, 20, "beta")])
def test_ddpm_matches_exact_chain_law(T, S, variance, mu, s, ptype):
    sch = NoiseSchedule(T)
    y = run(sch, mu, s, ptype, "ddpm", S, variance=variance)
    assert_moments(y, *chain_law(sch, mu, s, "ddpm", S, variance=variance))


@pytest.mark.parametrize("ptype", PTYPES)
@pytest.mark.parametrize("mu,s", CASES)
@pytest.mark.parametrize("S,eta", [(10, 0.0), (10, 1.0), (50, 0.0), (50, 1.0)])
def test_ddim_matches_exact_chain_law(S, eta, mu, s, ptype):
    sch = NoiseSchedule(200)
    y = run(sch, mu, s, ptype, "ddim", S, eta)
    assert_moments(y, *chain_law(sch, mu, s, "ddim", S, eta))


# Discretization error of the exact chains (from chain_law, cosine schedule): the std a
# sampler returns for y0 ~ N(mu, s^2), relative to s. The last DDPM step returns y0_hat
# without noise, so DDPM loses Var(y0 | y_1) ~ min(s^2, 1 - abar_1); "beta" variance
# (the upper bound) compensates. DDIM with few steps collapses to the posterior mean over
# its last, large step, so it under-disperses: S=10 gives ~0.8 s even for s = 3.
@pytest.mark.parametrize("T,variance,s,rel_tol", [
    (1000, "beta_tilde", 0.05, 0.05), (1000, "beta_tilde", 1.0, 0.01), (1000, "beta_tilde", 3.0, 0.01),
    (200, "beta", 0.05, 0.03), (200, "beta", 1.0, 0.01), (200, "beta", 3.0, 0.01),
    (100, "beta", 0.05, 0.03), (100, "beta", 1.0, 0.01), (100, "beta", 3.0, 0.02),
])
def test_ddpm_reproduces_target_distribution(T, variance, s, rel_tol):
    sch = NoiseSchedule(T)
    mean, std = chain_law(sch, 0.7, s, "ddpm", variance=variance)
    assert abs(mean - 0.7) < 1e-3 * max(s, 1)
    assert abs(std / s - 1) < rel_tol
    y = run(sch, 0.7, s, "v", "ddpm", variance=variance, seed=3)
    assert abs(y.mean().item() - 0.7) < Z * s / math.sqrt(N) + 1e-3 * max(s, 1)
    assert abs(y.std().item() / s - 1) < rel_tol + Z / math.sqrt(2 * N)


# Strided DDPM (T = 50, "beta", ddpm_timesteps' spacing): std / s is 0.84-1.05 with all 50
# steps for s = 0.03..3; 25 steps stay within 9 % for s >= 0.05, 20 steps within 11 %.
@pytest.mark.parametrize("S,rel_tol", [(50, 0.06), (25, 0.09), (20, 0.11)])
@pytest.mark.parametrize("s", [0.05, 0.1, 0.3, 1.0, 3.0])
def test_strided_ddpm_discretization_bounded(S, rel_tol, s):
    mean, std = chain_law(NoiseSchedule(50), 0.5, s, "ddpm", S, variance="beta")
    assert abs(mean - 0.5) < 1e-3 * max(s, 1)
    assert abs(std / s - 1) < rel_tol


# The analytic reverse variance (beta_tilde + coef1^2 Var(y0 | y_t), Var from the target's
# own variance) makes each reverse step the exact p(y_s | y_t) of a Gaussian target: from
# y_T distributed as the forward chain leaves it, the chain returns N(mu, s^2) to rounding
# at any stride, one step included; from the sampler's N(0, 1) start, to abar_T (< 1e-3).
# The "beta" chain's error at the same strides is 5 % or more for some s (checked, so the
# comparison can fail).
@pytest.mark.parametrize("S", [1, 2, 5, 20, 50])
@pytest.mark.parametrize("s", [0.01, 0.05, 0.3, 1.0, 3.0])
def test_analytic_variance_chain_is_exact_at_any_stride(S, s):
    sch = NoiseSchedule(50)
    ab_T = sch.abar[-1].item()
    forward = (math.sqrt(ab_T) * 0.5, ab_T * s * s + 1 - ab_T)
    mean, std = chain_law(sch, 0.5, s, "ddpm", S, variance="analytic", start=forward)
    assert abs(mean - 0.5) < 1e-12 and abs(std / s - 1) < 1e-10
    mean, std = chain_law(sch, 0.5, s, "ddpm", S, variance="analytic")
    assert abs(mean - 0.5) < 2e-3 and abs(std / s - 1) < 1e-3


def test_beta_variance_chain_is_not_exact_at_the_same_strides():
    errors = [abs(chain_law(NoiseSchedule(50), 0.5, s, "ddpm", S, variance="beta")[1] / s - 1)
              for S in (5, 20) for s in (0.05, 0.3)]
    assert max(errors) > 0.05


@pytest.mark.parametrize("ptype", PTYPES)
@pytest.mark.parametrize("mu,s", CASES)
@pytest.mark.parametrize("S", [3, 20])
def test_analytic_ddpm_samples_match_their_chain_law(S, mu, s, ptype):
    sch = NoiseSchedule(50)
    y = run(sch, mu, s, ptype, "ddpm", S, variance="analytic", seed=4)
    assert_moments(y, *chain_law(sch, mu, s, "ddpm", S, variance="analytic"))


def test_analytic_variance_needs_the_data_variance():
    sch = NoiseSchedule(50)
    with pytest.raises(ValueError, match="y0_var"):
        sch.posterior(torch.zeros(3), torch.zeros(3), 10, "analytic", 5)
    with pytest.raises(ValueError, match="variance must be one of"):
        sch.posterior(torch.zeros(3), torch.zeros(3), 10, "optimal", 5)


@pytest.mark.parametrize("s", [0.003, 0.01])
def test_last_step_with_the_data_variance_keeps_narrow_predictives(s):
    """Below the last step's noise level (sqrt(1 - abar_1) = 0.042 at T = 50) a chain that
    adds no noise at its last step collapses towards E[y0 | y_1]: std 0.12 s (s = 0.003)
    and 0.38 s (0.01) at 20 "beta" steps. Given the data variance, its last step adds
    Var(y0 | y_1) and the std is that of the target within 5 %; sampled moments agree."""
    sch = NoiseSchedule(50)
    assert chain_law(sch, 0.5, s, "ddpm", 20, variance="beta")[1] < 0.4 * s
    mean, std = chain_law(sch, 0.5, s, "ddpm", 20, variance="beta", data_var=True)
    assert abs(mean - 0.5) < 1e-3 and abs(std / s - 1) < 0.05
    noise = draw_noise(n_noise_draws(sch, 20), (N,), torch.Generator().manual_seed(2), torch.float64)
    y = sample(oracle(sch, 0.5, s, "v"), sch, noise, "ddpm", 20, 0.0, "v", "beta",
               y0_var=torch.tensor(s * s, dtype=torch.float64))
    assert_moments(y, mean, std)


@pytest.mark.parametrize("S,eta,min_ratio", [(50, 0.0, 0.95), (50, 1.0, 0.94), (10, 0.0, 0.80), (10, 1.0, 0.78)])
def test_ddim_mean_exact_std_discretization_bounded(S, eta, min_ratio):
    sch = NoiseSchedule(200)
    mean, std = chain_law(sch, -1.0, 3.0, "ddim", S, eta)
    assert abs(mean + 1.0) < 0.01
    assert min_ratio < std / 3.0 < 1.0


def test_ddim_full_steps_eta1_equals_ddpm():
    sch = NoiseSchedule(50)
    noise = draw_noise(51, (1000,), torch.Generator().manual_seed(0), torch.float64)
    den = oracle(sch, 0.3, 0.7, "v")
    a = ddim_sample(den, sch, noise, 50, eta=1.0, prediction_type="v")
    b = ddpm_sample(den, sch, noise, prediction_type="v", variance="beta_tilde")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_guide_posterior_coefficients_fail():
    """The guide's p_sample_loop used sqrt(abar_t) and (1-alpha_t) sqrt(1-abar_t) as the
    posterior-mean coefficients; with the exact oracle that visibly breaks the std."""
    sch = NoiseSchedule(200)
    mu, s = 0.5, 1.0
    den = oracle(sch, mu, s, "sample")
    noise = draw_noise(201, (N,), torch.Generator().manual_seed(0), torch.float64)
    y = noise[0]
    for i, t in enumerate(range(200, 0, -1), start=1):
        ab, beta = sch.abar[t].item(), sch.betas[t].item()
        mean = math.sqrt(ab) * den(y, t) + beta * math.sqrt(1 - ab) * y
        var = beta * (1 - sch.abar[t - 1].item()) / (1 - ab)
        y = mean + math.sqrt(var) * noise[i] if t > 1 else mean
    wrong = abs(y.std().item() - s) + abs(y.mean().item() - mu)
    right = run(sch, mu, s, "sample", "ddpm")
    assert abs(right.std().item() - s) < 0.03
    assert wrong > 0.2


def test_samplers_reject_bad_settings():
    sch = NoiseSchedule(100)
    noise = torch.zeros(11, 3)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(lambda y, t: y, sch, noise, 10, eta=1.5)
    with pytest.raises(ValueError, match="sampler"):
        sample(lambda y, t: y, sch, noise, "euler")
    with pytest.raises(ValueError, match="prediction_type"):
        sch.to_y0_eps(noise[0], noise[0], 5, "x0")


@pytest.mark.parametrize("T", [10, 50, 200])
def test_ddpm_timesteps_strictly_decreasing_from_T(T):
    for S in range(1, T + 1):
        steps = ddpm_timesteps(T, S)
        assert len(steps) == S and steps[0] == T and steps[-1] >= 1
        assert all(a > b for a, b in zip(steps, steps[1:]))
    assert ddpm_timesteps(T, T) == list(range(T, 0, -1))
    assert ddpm_timesteps(50, 10) == [50, 43, 36, 29, 23, 18, 13, 8, 4, 2]
    with pytest.raises(ValueError, match="n_sampling_steps"):
        ddpm_timesteps(T, T + 1)


def test_antithetic_noise_pairs():
    g = torch.Generator().manual_seed(0)
    e = draw_noise(3, (2, 5), g, torch.float64, antithetic=True)
    assert e.shape == (3, 2, 5)
    torch.testing.assert_close(e[..., 3:], -e[..., :2], rtol=0, atol=0)  # 2 pairs + 1 unpaired
    again = draw_noise(3, (2, 5), torch.Generator().manual_seed(0), torch.float64, antithetic=True)
    torch.testing.assert_close(e, again, rtol=0, atol=0)


@pytest.mark.parametrize("sampler,S", [("ddpm", 20), ("ddpm", None), ("ddim", 10)])
def test_antithetic_pair_means_are_exact_for_gaussian_target(sampler, S):
    """With the oracle every sampler is affine in its noise, so each antithetic pair
    averages to the chain law's mean exactly: no Monte Carlo error in the mean at all."""
    sch, mu, s = NoiseSchedule(50), 0.7, 0.4
    noise = draw_noise(n_noise_draws(sch, S or 50), (64,), torch.Generator().manual_seed(1),
                       torch.float64, antithetic=True)
    y = sample(oracle(sch, mu, s, "v"), sch, noise, sampler, S or 50, 0.0, "v", "beta")
    mean, std = chain_law(sch, mu, s, sampler, S, variance="beta")
    torch.testing.assert_close((y[:32] + y[32:]) / 2, torch.full((32,), mean, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert 0.5 * std < y.std().item() < 1.5 * std  # pairs still spread like the law
