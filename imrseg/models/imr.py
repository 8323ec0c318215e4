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


class IterativeMutualRefinement(nn.Module):
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

    @staticmethod
    def _gate(convs, x: torch.Tensor) -> torch.Tensor:
        first, left, right = convs
        y = first(x)
        return torch.cat([left(y[:, :256]), right(y[:, 256:])], dim=1)

    def refine_step(self, encoded: torch.Tensor, mid: torch.Tensor, mask: torch.Tensor,
                    state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One GRU update and decode. `mask` (B,1,50,50) is the CAM or the previous
        prediction; returns (logits (B,2,100,100), new state)."""
        x = torch.cat([mask, encoded, mid, state], dim=1)
        z = torch.sigmoid(self._gate((self.convz0, self.convz1, self.convz2), x))
        r = torch.sigmoid(self._gate((self.convr0, self.convr1, self.convr2), x))
        candidate = torch.tanh(self._gate((self.convh0, self.convh1, self.convh2),
                                          torch.cat([mask, encoded, mid, r * state], dim=1)))
        state = (1 - z) * state + z * candidate

        decoded = self.decoder1(state + encoded)
        decoded = F.interpolate(decoded, LOGIT_SIZE, mode="bilinear", align_corners=True)
        logits = self.decoder2(decoded)
        prior = F.interpolate(mask, LOGIT_SIZE, mode="bilinear", align_corners=True)
        return self.res(torch.cat([logits, prior], dim=1)), state
