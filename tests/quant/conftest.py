"""A small network with every quantizable layer kind, shared by the quant tests."""

import pytest
import torch
import torch.nn as nn


class TinyNet(nn.Module):
    """ids: (N, T) int64, feats: (N, 1, H, W) -> (N, T, n_out) float."""

    def __init__(self, d: int = 32, vocab: int = 20, n_out: int = 7):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.frontend = nn.Conv2d(1, 4, 3, stride=2)
        self.ff = nn.Linear(d, 2 * d)
        self.pw = nn.Conv1d(2 * d, d, 1)
        self.dw = nn.Conv1d(d, d, 5, padding=2, groups=d)
        self.gconv = nn.Conv1d(d, d, 3, padding=1, groups=4)
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, n_out)

    def forward(self, ids, feats):
        f = self.frontend(feats).mean((1, 2, 3))  # (N,)
        x = self.ff(self.emb(ids)).relu().transpose(1, 2)
        x = self.conv(self.gconv(self.dw(self.pw(x))))
        return self.out(self.norm(x.transpose(1, 2))) + f[:, None, None]


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 20, (3, 11), generator=g), torch.randn(
        3, 1, 13, 9, generator=g
    )


@pytest.fixture
def tiny_net_cls():
    return TinyNet
