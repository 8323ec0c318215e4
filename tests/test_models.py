"""The network's building blocks against their plain-PyTorch definitions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from imrseg.models.conv4d import CenterPivotConv4d, ChannelsLastGroupNorm
from imrseg.models.correlation import StageFeatures, mask_factor, masked_correlation, resize_mask, stage_cosine


def test_channels_last_group_norm_equals_group_norm():
    torch.manual_seed(0)
    norm = ChannelsLastGroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    # An offset mean stresses the E[x^2] - E[x]^2 variance.
    x = torch.randn(2, 6, 5, 3, 4, 16) * 0.5 + 8.0
    expected = F.group_norm(x.permute(0, 5, 1, 2, 3, 4), 4, norm.weight, norm.bias, norm.eps)
    assert torch.allclose(norm(x), expected.permute(0, 2, 3, 4, 5, 1), atol=2e-5, rtol=0)


def test_center_pivot_conv_matches_its_definition():
    """conv1 over the query dims at the strided support positions plus conv2 over
    the support dims, as HSNet defines it on (B, C, ha, wa, hb, wb) tensors."""
    torch.manual_seed(1)
    conv = CenterPivotConv4d(3, 5, (3, 3, 5, 5), (1, 1, 2, 2), (1, 1, 2, 2))
    x = torch.randn(2, 3, 7, 6, 9, 8)  # channel-major, as HSNet
    b, c, ha, wa, hb, wb = x.shape
    pruned = x[..., ::2, ::2]
    out1 = conv.conv1(pruned.permute(0, 4, 5, 1, 2, 3).reshape(-1, c, ha, wa))
    out1 = out1.view(b, pruned.shape[4], pruned.shape[5], 5, ha, wa).permute(0, 3, 4, 5, 1, 2)
    out2 = conv.conv2(x.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, hb, wb))
    out2 = out2.view(b, ha, wa, 5, *out2.shape[-2:]).permute(0, 3, 1, 2, 4, 5)
    expected = out1 + out2
    ours = conv(x.permute(0, 2, 3, 4, 5, 1).contiguous())  # channels innermost in and out
    assert torch.allclose(ours.permute(0, 5, 1, 2, 3, 4), expected, atol=1e-5)


def test_factorised_correlation_equals_masking_the_features():
    """relu(cos) x per-position factors == HSNet's masked, normalised correlation."""
    torch.manual_seed(2)
    q_taps = [torch.randn(2, 8, 5, 6) for _ in range(3)]
    s_taps = [torch.randn(2, 8, 4, 3) for _ in range(3)]
    q_mask, s_mask = torch.rand(2, 10, 10), torch.rand(2, 10, 10)
    query, support = StageFeatures.from_taps(q_taps), StageFeatures.from_taps(s_taps)
    qm, sm = resize_mask(q_mask, query.size), resize_mask(s_mask, support.size)
    ours = masked_correlation(stage_cosine(query, support), mask_factor(query, qm), mask_factor(support, sm),
                              query.size, support.size)
    eps = 1e-5
    layers = []
    for q, s in zip(q_taps, s_taps):
        q = (q * qm.unsqueeze(1)).flatten(2)
        s = (s * sm.unsqueeze(1)).flatten(2)
        q = q / (q.norm(dim=1, keepdim=True) + eps)
        s = s / (s.norm(dim=1, keepdim=True) + eps)
        layers.append(torch.bmm(q.transpose(1, 2), s).clamp(min=0).view(2, 5, 6, 4, 3))
    expected = torch.stack(layers, dim=-1)  # (B, hq, wq, hs, ws, L)
    assert torch.allclose(ours, expected, atol=1e-6)
    transposed = masked_correlation(stage_cosine(query, support), mask_factor(query, qm),
                                    mask_factor(support, sm), query.size, support.size, transpose=True)
    assert torch.allclose(transposed, expected.permute(0, 3, 4, 1, 2, 5), atol=1e-6)
