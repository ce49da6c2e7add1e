"""The GPT-2 set denoiser: one token per data point, context-only attention.

Token i carries [x_i zero-padded to ``max_features``, y_i, is_context_i]. Context tokens
hold clean y; target tokens hold the noisy y_t and get a time embedding added. The
attention mask lets every token see all context tokens and itself, nothing else, and all
position ids are 0, so outputs are invariant to the order of the context and each target
is independent of the other targets.

With ``linear_features=True`` every token also carries closed-form in-context features:
the predictions at its x of two ridge regressions fitted to the context (light and
strong shrinkage) and the leverage of x under the light one. They are a fixed inductive
bias (no parameters), computed from the context alone, so every invariance above still
holds; the transformer learns how far to trust them, how noisy the task is (from the
context residuals) and everything non-linear.
"""

import math

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model


def sinusoidal_embedding(t, dim, max_period=10000.0):
    """Transformer-style sinusoidal features of (possibly fractional) timesteps ``t``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def attention_mask(is_context):
    """Boolean mask (B, 1, N, N): query i may attend key j iff j is context or j == i."""
    n = is_context.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=is_context.device)
    return (is_context[:, None, :] | eye[None]).unsqueeze(1)


RIDGE_LAMBDAS = (0.01, 1.0)  # times the context size, on standardized data


def ridge_features(x, y, is_context, lambdas=RIDGE_LAMBDAS):
    """(B, N, len(lambdas) + 1): ridge predictions of y at each x from the context, and
    log(1 + leverage) under the first lambda. Zero features with no context."""
    w = is_context.to(x.dtype)[..., None]
    k = w.sum(dim=1, keepdim=True).clamp(min=1)                      # (B, 1, 1)
    gram = (x * w).transpose(1, 2) @ x                                # (B, F, F)
    rhs = (x * w).transpose(1, 2) @ y[..., None]                      # (B, F, 1)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    feats = []
    for i, lam in enumerate(lambdas):
        a = gram + lam * k * eye
        feats.append((x @ torch.linalg.solve(a, rhs))[..., 0])
        if i == 0:
            lev = (x * torch.linalg.solve(a, x.transpose(1, 2)).transpose(1, 2)).sum(-1)
    return torch.stack(feats + [torch.log1p(lev.clamp(min=0))], dim=-1)


def mlp(d_in, d_hidden, d_out):
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class SetDenoiser(nn.Module):
    """Predicts eps, v or y0 for every target token of a batch of tasks.

    Parameters mirror ``GPT2Config``; ``max_features`` fixes the width of x.
    """

    def __init__(self, max_features=10, n_layer=4, n_embd=128, n_head=4, linear_features=True):
        super().__init__()
        self.max_features, self.n_embd = max_features, n_embd
        self.linear_features = linear_features
        n_extra = len(RIDGE_LAMBDAS) + 1 if linear_features else 0
        config = GPT2Config(
            vocab_size=1, n_positions=1, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )
        self.read_in = mlp(max_features + 2 + n_extra, 2 * n_embd, n_embd)
        self.time_mlp = mlp(n_embd, 2 * n_embd, n_embd)
        self.backbone = GPT2Model(config)
        self.read_out = nn.Linear(n_embd, 1)

    def forward(self, x, y, is_context, t):
        """x: (B, N, max_features); y, t: (B, N); is_context: (B, N) bool -> (B, N)."""
        if x.shape[-1] != self.max_features:
            raise ValueError(f"x has {x.shape[-1]} features, denoiser expects {self.max_features}")
        flag = is_context.to(x.dtype)
        tokens = [x, y[..., None], flag[..., None]]
        if self.linear_features:
            tokens.append(ridge_features(x, y, is_context))
        h = self.read_in(torch.cat(tokens, dim=-1))
        time = self.time_mlp(sinusoidal_embedding(t, self.n_embd).to(x.dtype))
        h = h + (1.0 - flag)[..., None] * time
        position_ids = torch.zeros(is_context.shape, dtype=torch.long, device=x.device)
        out = self.backbone(inputs_embeds=h, attention_mask=attention_mask(is_context),
                            position_ids=position_ids).last_hidden_state
        return self.read_out(out).squeeze(-1)


def pad_features(x, max_features):
    """Zero-pad the last axis of ``x`` to ``max_features`` columns."""
    d = x.shape[-1]
    if d > max_features:
        raise ValueError(f"{d} features exceed max_features={max_features}")
    return torch.nn.functional.pad(x, (0, max_features - d))
