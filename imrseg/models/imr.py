"""The Iterative Mutual Refinement cell (a convolutional GRU over the encoded
correlation), the decoder and the residual head that mixes the decoded logits
with the previous mask. Parameter names are the authors' (`convz0`, `res.0`, ...),
which is why these layers live on the network itself rather than in a submodule."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STATE_CHANNELS = 128
STATE_SIZE = (50, 50)
MID_CHANNELS = 512
LOGIT_SIZE = (100, 100)


def _gate_convs():
    """1x1 conv over [mask, encoded corr, mid feature, state] (769 ch), then one
    3x3 group conv per half: 769 -> 512 -> 2 x (256 -> 64)."""
    in_channels = 1 + STATE_CHANNELS + MID_CHANNELS + STATE_CHANNELS
    return (nn.Conv2d(in_channels, 512, kernel_size=1),
            nn.Conv2d(256, 64, kernel_size=3, padding=1, groups=8),
            nn.Conv2d(256, 64, kernel_size=3, padding=1, groups=8))


# Input channels of the gates' 1x1 convolutions: [mask | encoded | mid | state].
_MID = slice(1 + STATE_CHANNELS, 1 + STATE_CHANNELS + MID_CHANNELS)


def _without_mid(weight: torch.Tensor) -> torch.Tensor:
    """A gate's 1x1 weight without the mid feature's input channels (slices, no index
    tensor made on the host: nothing stops a CUDA graph capturing a step)."""
    return torch.cat([weight[:, :_MID.start], weight[:, _MID.stop:]], dim=1)


class IterativeMutualRefinement(nn.Module):
    """A 1x1 convolution of a concatenation is the sum of 1x1 convolutions of its
    parts, so the mid feature's share of the three gates (two thirds of their input)
    is computed once per image by `mid_gates`, and each step only convolves the
    mask, the encoded correlation and the state. The z and r gates share their
    input and run as one convolution pair."""

    def __init__(self):
        super().__init__()
        self.state = nn.Parameter(torch.zeros(1, STATE_CHANNELS, *STATE_SIZE))
        self.convz0, self.convz1, self.convz2 = _gate_convs()
        self.convr0, self.convr1, self.convr2 = _gate_convs()
        self.convh0, self.convh1, self.convh2 = _gate_convs()
        self.decoder1 = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(128, 64, 3, padding=1), nn.ReLU())
        self.decoder2 = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(64, 2, 3, padding=1))
        self.res = nn.Sequential(nn.Conv2d(3, 10, kernel_size=1), nn.GELU(),
                                 nn.Conv2d(10, 2, kernel_size=1))

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return self.state.expand(batch_size, -1, -1, -1)

    def mid_gates(self, mid: torch.Tensor) -> torch.Tensor:
        """The mid feature's share of the z, r and h 1x1 convolutions, biases
        included: (B, 3 x 512, 50, 50)."""
        weight = torch.cat([c.weight[:, _MID] for c in (self.convz0, self.convr0, self.convh0)])
        bias = torch.cat([self.convz0.bias, self.convr0.bias, self.convh0.bias])
        return F.conv2d(mid, weight, bias)

    def _step_weights(self):
        zr0 = _without_mid(torch.cat([self.convz0.weight, self.convr0.weight]))
        h0 = _without_mid(self.convh0.weight)
        zr1 = torch.cat([c.weight for c in (self.convz1, self.convz2, self.convr1, self.convr2)])
        zr1_bias = torch.cat([c.bias for c in (self.convz1, self.convz2, self.convr1, self.convr2)])
        h1 = torch.cat([self.convh1.weight, self.convh2.weight])
        h1_bias = torch.cat([self.convh1.bias, self.convh2.bias])
        return zr0, h0, zr1, zr1_bias, h1, h1_bias

    def refine_step(self, encoded: torch.Tensor, mid_gates: torch.Tensor, mask: torch.Tensor,
                    state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One GRU update and decode. `mask` (B,1,50,50) is the CAM or the previous
        prediction; returns (logits (B,2,100,100), new state)."""
        zr0, h0, zr1, zr1_bias, h1, h1_bias = self._step_weights()
        # Each gate's two 8-group convolutions (32 -> 8 channels a group) side by side:
        # z and r together are 32 groups, h alone 16.
        zr = F.conv2d(torch.cat([mask, encoded, state], dim=1), zr0) + mid_gates[:, :1024]
        zr = torch.sigmoid(F.conv2d(zr, zr1, zr1_bias, padding=1, groups=32))
        z, r = zr[:, :STATE_CHANNELS], zr[:, STATE_CHANNELS:]
        h = F.conv2d(torch.cat([mask, encoded, r * state], dim=1), h0) + mid_gates[:, 1024:]
        candidate = torch.tanh(F.conv2d(h, h1, h1_bias, padding=1, groups=16))
        state = (1 - z) * state + z * candidate

        decoded = self.decoder1(state + encoded)
        decoded = F.interpolate(decoded, LOGIT_SIZE, mode="bilinear", align_corners=True)
        logits = self.decoder2(decoded)
        prior = F.interpolate(mask, LOGIT_SIZE, mode="bilinear", align_corners=True)
        return self.res(torch.cat([logits, prior], dim=1)), state
