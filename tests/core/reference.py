"""An independent float64 reference of the paper's equations (Eqs. 8, 9, 13-16, Algorithm 1), for tests.

Written straight from the spec with explicit formulas; it does not import bcn.
"""
import torch


def per_channel(v):
    return v.reshape(1, -1, 1, 1)


def batch_part(x, mean, var, gamma_b, beta_b, eps=1e-5):
    """Eq. 13-14: X1[:, c] = gamma_b[c] * (X[:, c] - mu[c]) / sqrt(var[c] + eps) + beta_b[c]."""
    return per_channel(gamma_b) * (x - per_channel(mean)) / torch.sqrt(per_channel(var) + eps) \
        + per_channel(beta_b)


def channel_part(x1, groups, gamma_c, beta_c, eps=1e-5):
    """Eq. 15 on X1 viewed as (B, G, C/G*H*W); gamma_c/beta_c of G values or C values."""
    b, c, h, w = x1.shape
    v = x1.reshape(b, groups, -1)
    mean = v.sum(-1, keepdim=True) / v.shape[-1]
    var = ((v - mean) ** 2).sum(-1, keepdim=True) / v.shape[-1]
    normalized = ((v - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w)
    if gamma_c.numel() == groups:
        per_ch = lambda t: t.reshape(groups, 1).expand(groups, c // groups).reshape(c)
        gamma_c, beta_c = per_ch(gamma_c), per_ch(beta_c)
    return per_channel(gamma_c) * normalized + per_channel(beta_c)


def batch_stats(x):
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.sum((0, 2, 3)) / n
    var = ((x - per_channel(mean)) ** 2).sum((0, 2, 3)) / n
    return mean, var, n


def algorithm1_update(x, mu_hat, var_hat, r):
    """Steps 1-4: new batch mean; mean square around the OLD mean estimate; both moved at r."""
    n = x.shape[0] * x.shape[2] * x.shape[3]
    m = x.sum((0, 2, 3)) / n
    v = ((x - per_channel(mu_hat)) ** 2).sum((0, 2, 3)) / n
    return mu_hat + r * (m - mu_hat), var_hat + r * (v - var_hat)


def standardize_weight(w, eps=1e-5, form="eps_in_sqrt"):
    """Eq. 9 per output channel, unbiased variance."""
    flat = w.reshape(w.shape[0], -1)
    n = flat.shape[1]
    mean = flat.sum(1, keepdim=True) / n
    var = ((flat - mean) ** 2).sum(1, keepdim=True) / (n - 1)
    if form == "eps_in_sqrt":
        out = (flat - mean) / torch.sqrt(var + eps)
    else:
        out = (flat - mean) / (torch.sqrt(var) + eps)
    return out.reshape(w.shape)


def statdiff(mu, sigma, groups):
    """Eq. 8, one value per group."""
    out = []
    for g in range(groups):
        m = mu.reshape(groups, -1)[g].double()
        s = sigma.reshape(groups, -1)[g].double()
        k = m.numel()
        out.append(torch.sqrt(sum(m ** 2) / k - (sum(m) / k) ** 2) / (sum(s) / k))
    return torch.stack(out)
