"""The encoder + diffusion-head denoiser: the set denoiser's invariances, its cached
sampling path, and float32 results that do not depend on the other queries."""

import pytest
import torch

from skdiffusion.denoiser import pad_features
from skdiffusion.diffusion import NoiseSchedule, draw_noise
from skdiffusion.head import HeadDenoiser
from skdiffusion.inference import QUERY_CHUNK, sample_standardized

F, K, M, S = 6, 7, 5, 3
SCHEDULE = NoiseSchedule(50)


def make_model(dtype=torch.float64, baseline="ridge"):
    torch.manual_seed(0)
    m = HeadDenoiser(max_features=F, n_layer=2, n_embd=32, n_head=2, abar=SCHEDULE.abar,
                     head_width=16, head_depth=2, baseline=baseline).eval()
    for p in m.head.parameters():  # the head starts at zero; make its part count
        torch.nn.init.normal_(p, std=0.3)
    return m.to(dtype)


@pytest.fixture(scope="module", params=["ridge", "gp", "ard"])
def model(request):
    return make_model(baseline=request.param)


def task(seed, k=K, m=M, d=4):
    g = torch.Generator().manual_seed(seed)
    x = pad_features(torch.randn(k + m, d, generator=g, dtype=torch.float64), F)
    y = torch.randn(k + m, generator=g, dtype=torch.float64)
    y_t = torch.randn(k + m, S, generator=g, dtype=torch.float64)
    return x, y, torch.arange(k + m) < k, y_t, torch.randint(1, 51, (k + m, S), generator=g)


def forward(model, x, y, c, y_t, t):
    return model(x[None], y[None], c[None], y_t[None], t[None])[0]


@torch.no_grad()
def test_untrained_head_is_the_gaussian_baseline():
    """Zero-initialized read-out: the untrained model is the exact Gaussian denoiser of
    the linear baseline, whatever the encoder computes."""
    m = HeadDenoiser(max_features=F, n_layer=1, n_embd=16, n_head=2, abar=SCHEDULE.abar).double()
    x, y, c, y_t, t = task(0)
    from skdiffusion.denoiser import gaussian_baseline, ridge_features
    feats = ridge_features(x[None], y[None] * c[None], c[None])[0]
    expected = gaussian_baseline(feats[:, None], m.abar[t], y_t, "v", m.leverage_cap,
                                 m.variance_cap)
    torch.testing.assert_close(forward(m, x, y, c, y_t, t)[K:], expected[K:], rtol=0, atol=1e-12)


@torch.no_grad()
def test_target_independent_of_other_targets_and_of_target_y(model):
    x, y, c, y_t, t = task(1)
    full = forward(model, x, y, c, y_t, t)[K:]
    for j in range(M):
        keep = torch.cat([torch.arange(K), torch.tensor([K + j])])
        alone = forward(model, x[keep], y[keep], c[keep], y_t[keep], t[keep])[-1]
        torch.testing.assert_close(alone, full[j], rtol=0, atol=1e-10)
    y_other = y.clone()
    y_other[K:] += 100.0  # targets' clean y never reach the model
    torch.testing.assert_close(forward(model, x, y_other, c, y_t, t)[K:], full, rtol=0, atol=0)


@torch.no_grad()
def test_output_invariant_to_context_permutation(model):
    x, y, c, y_t, t = task(2)
    full = forward(model, x, y, c, y_t, t)[K:]
    perm = torch.cat([torch.randperm(K, generator=torch.Generator().manual_seed(3)),
                      torch.arange(K, K + M)])
    # float64 rounding of the permuted sums, carried through the ARD member's Adam steps:
    # 1.1e-10 on one thread (OMP_NUM_THREADS=1), under 1e-10 on two
    torch.testing.assert_close(forward(model, x[perm], y[perm], c[perm], y_t[perm], t[perm])[K:],
                               full, rtol=0, atol=1e-9)
    y2 = y.clone()
    y2[0] += 1.0
    assert not torch.allclose(forward(model, x, y2, c, y_t, t)[K:], full)


@torch.no_grad()
@pytest.mark.parametrize("k", [0, 1, K])
def test_cached_sampling_path_equals_full_forward(model, k):
    x, y, c, y_t, _ = task(4, k=k)
    full = forward(model, x, y, c, y_t, torch.full_like(y_t, 17, dtype=torch.long))[k:]
    cache = model.encode_context(x[None, :k], y[None, :k])
    h, feats = model.encode_queries(cache, x[None, k:])
    cached = model.denoise(model.head.project(h)[:, :, None], model.moments(feats[:, :, None]),
                           y_t[None, k:], 17)[0]
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-10)


@torch.no_grad()
@pytest.mark.parametrize("baseline", ["ridge", "gp", "ard"])
def test_float32_samples_do_not_depend_on_the_other_queries(baseline):
    """Fixed-size query chunks: a query's float32 samples are bit-identical alone, among
    others, in another order and past a chunk boundary."""
    model = make_model(torch.float32, baseline)
    g = torch.Generator().manual_seed(5)
    m = QUERY_CHUNK + 9
    x_ctx, y_ctx = torch.randn(1, 20, F, generator=g), torch.randn(1, 20, generator=g)
    x_q = torch.randn(1, m, F, generator=g)
    noise = draw_noise(11, (1, m, 4), g)
    full = sample_standardized(model, SCHEDULE, x_ctx, y_ctx, x_q, noise, "ddpm", 10)
    assert full.shape == (1, m, 4) and torch.isfinite(full).all()
    for rows in ([3], [m - 1, 0, QUERY_CHUNK], list(range(m))[::-1]):
        part = sample_standardized(model, SCHEDULE, x_ctx, y_ctx, x_q[:, rows], noise[:, :, rows],
                                   "ddpm", 10)
        torch.testing.assert_close(part, full[:, rows], rtol=0, atol=0)


@torch.no_grad()
def test_queries_far_beyond_a_determined_context_get_the_baseline_alone(model, monkeypatch):
    """A query more than EXTRAPOLATION context standard deviations beyond the range of
    all the context's parts in some feature, in a context of k >= d + 2 points, is sampled
    exactly as by the same model with a zero head (its Gaussian baseline through the same
    chain), which without the gate it is not; queries within that range, and every query
    of a smaller context, keep the head's correction. The range is that of all parts
    together: query 1 lies far beyond the first two parts' range, within the third's."""
    import copy

    from skdiffusion import inference

    zero = copy.deepcopy(model)
    for p in zero.head.read_out.parameters():
        p.zero_()
    g = torch.Generator().manual_seed(3)
    x = pad_features(torch.randn(1, 45, 4, generator=g, dtype=torch.float64), F)
    x[0, 44, 2] = 3.5                                   # the third part's widest point
    y = torch.randn(1, 45, generator=g, dtype=torch.float64)
    q = torch.zeros(1, 4, F, dtype=torch.float64)
    tau = inference.EXTRAPOLATION
    q[0, 1, 2] = 3.5 + 0.9 * tau                        # within the whole range's margin
    q[0, 2, 2] = 3.5 + 1.1 * tau                        # beyond it
    q[0, 3, 0] = x[0, :, 0].min() - 1.1 * tau           # beyond it, below
    assert inference.beyond_context(x[:, :30], q)[0, 1] > tau  # per part it would be far
    noise = draw_noise(11, (3, 1, 4, S), g, torch.float64)
    parts = [(x[:, a:a + 15], y[:, a:a + 15]) for a in (0, 15, 30)]
    few = [(x[:, :5], y[:, :5])]                        # k = 5 < d + 2 = 6

    def draws(m, contexts):
        return inference.sample_context_parts(m, SCHEDULE, contexts, q, noise[:, :len(contexts)],
                                              "ddpm", 10)

    got, ref = draws(model, parts), draws(zero, parts)
    torch.testing.assert_close(got[..., 2:, :], ref[..., 2:, :], rtol=0, atol=0)
    assert ((got[..., :2, :] - ref[..., :2, :]).abs() > 1e-6).all()
    assert ((draws(model, few) - draws(zero, few)).abs() > 1e-6).all()
    monkeypatch.setattr(inference, "EXTRAPOLATION", float("inf"))
    assert ((draws(model, parts)[..., 2:, :] - ref[..., 2:, :]).abs() > 1e-6).all()


@torch.no_grad()
def test_reflected_contexts_make_the_sampler_equivariant_under_y_to_minus_y(model, monkeypatch):
    """With REFLECT, half the samples come from the context with y negated (negated back,
    their noise negated): the sampler is then exactly equivariant, negating y and swapping
    the halves of the (negated) noise negates the samples with their halves swapped, for
    a head that is not (two context parts). A zero head, equivariant already, samples
    what it samples without REFLECT, for any number of samples (5: an odd one)."""
    import copy

    from skdiffusion import inference

    g = torch.Generator().manual_seed(4)
    x = pad_features(torch.randn(1, 24, 4, generator=g, dtype=torch.float64), F)
    y = torch.randn(1, 24, generator=g, dtype=torch.float64)
    q = pad_features(torch.randn(1, 5, 4, generator=g, dtype=torch.float64), F)

    def draws(m, sign, noise):
        parts = [(x[:, :12], sign * y[:, :12]), (x[:, 12:], sign * y[:, 12:])]
        return inference.sample_context_parts(m, SCHEDULE, parts, q, noise, "ddpm", 10)

    noise = draw_noise(11, (2, 1, 5, 4), g, torch.float64)
    swap = lambda a: torch.cat([a[..., 2:], a[..., :2]], -1)  # noqa: E731
    got = draws(model, 1, noise)
    torch.testing.assert_close(draws(model, -1, -swap(noise)), -swap(got), rtol=0, atol=1e-12)
    monkeypatch.setattr(inference, "REFLECT", False)
    assert ((draws(model, -1, -swap(noise)) + swap(got)).abs() > 1e-6).any()  # not without
    zero = copy.deepcopy(model)
    for p in zero.head.read_out.parameters():
        p.zero_()
    odd = draw_noise(11, (2, 1, 5, 5), g, torch.float64)
    plain = draws(zero, 1, odd)
    monkeypatch.setattr(inference, "REFLECT", True)
    torch.testing.assert_close(draws(zero, 1, odd), plain, rtol=0, atol=1e-10)
    assert ((draws(model, 1, odd) - plain).abs() > 1e-6).any()  # the head's part counts


@torch.no_grad()
def test_contexts_of_different_lengths_encode_as_one_batch(model):
    """encode_context's ``real`` mask: two contexts zero-padded to one length and encoded
    in one batch give each query the embedding and features that its own context alone
    gives; without the mask the shorter context's padding is read."""
    x, y, _, _, _ = task(6, k=K, m=M)
    q = x[None, K:]
    short = 4
    X = torch.stack([x[:K], torch.cat([x[:short], torch.zeros(K - short, F, dtype=x.dtype)])])
    Y = torch.stack([y[:K], torch.cat([y[:short], torch.zeros(K - short, dtype=y.dtype)])])
    real = torch.arange(K) < torch.tensor([[K], [short]])
    h, feats = model.encode_queries(model.encode_context(X, Y, real=real), q.expand(2, -1, -1))
    for i, k in enumerate((K, short)):
        h1, f1 = model.encode_queries(model.encode_context(x[None, :k], y[None, :k]), q)
        torch.testing.assert_close(h[i], h1[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(feats[i], f1[0], rtol=0, atol=1e-10)
    unmasked, _ = model.encode_queries(model.encode_context(X, Y), q.expand(2, -1, -1))
    assert (unmasked[1] - h1[0]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("baseline", ["ridge", "gp"])
def test_sampling_encodes_every_part_and_sign_in_one_batch(monkeypatch, baseline):
    """The sampler encodes all the context's parts (of unequal lengths) and their
    reflections in one batch, each with the whole context's baseline fit (GP) or its own
    (ridge): the samples are those of encoding one part at a time, to float64 rounding."""
    from skdiffusion import inference

    model = make_model(baseline=baseline)
    g = torch.Generator().manual_seed(8)
    x = pad_features(torch.randn(1, 23, 4, generator=g, dtype=torch.float64), F)
    y = torch.randn(1, 23, generator=g, dtype=torch.float64)
    q = pad_features(torch.randn(1, 5, 4, generator=g, dtype=torch.float64), F)
    parts = [(x[:, :8], y[:, :8]), (x[:, 8:16], y[:, 8:16]), (x[:, 16:], y[:, 16:])]
    noise = draw_noise(11, (3, 1, 5, 4), g, torch.float64)
    batched = inference.sample_context_parts(model, SCHEDULE, parts, q, noise, "ddpm", 10)
    encode = inference._encode
    monkeypatch.setattr(inference, "_encode", lambda m, fit, blocks, chunks, n: tuple(
        torch.cat(z, 1) for z in zip(*[encode(m, fit, [b], chunks, n) for b in blocks])))
    one_by_one = inference.sample_context_parts(model, SCHEDULE, parts, q, noise, "ddpm", 10)
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-10)


@torch.no_grad()
def test_head_in_place_path_is_the_autograd_path_bit_for_bit():
    """The head with ``buffers`` (sampling) computes in reused scratch memory exactly
    what it computes without them, call after call, for every shape it is given, and
    leaves its inputs as they were."""
    torch.manual_seed(1)
    head = make_model(torch.float32, "gp").head
    width = head.read_out.in_features
    buffers = {}
    for rows, draws in ((40, 3), (40, 3), (24, 5)):
        inputs = torch.randn(rows, draws, 2)
        hc, time = torch.randn(rows, 1, width), torch.randn(1, width)
        copies = [a.clone() for a in (inputs, hc, time)]
        expected = head(inputs, hc, time)
        torch.testing.assert_close(head(inputs, hc, time, buffers), expected, rtol=0, atol=0)
        for a, b in zip((inputs, hc, time), copies):
            assert torch.equal(a, b)
    assert sorted(buffers) == [(24, 5, width), (40, 3, width)]
