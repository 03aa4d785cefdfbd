"""TinyViT pieces checked against their plain formulas."""
from __future__ import annotations

import pytest
import torch

from mobile_sam.modeling.tiny_vit import MBConv


def _block(dim: int, drop_path: float) -> MBConv:
    torch.manual_seed(0)
    block = MBConv(dim, 4.0, drop_path)
    for bn in (m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    return block


def _whole(block: MBConv, x: torch.Tensor) -> torch.Tensor:
    y = block.conv3(block.act2(block.conv2(block.act1(block.conv1(x)))))
    return block.act3(x + block.drop_path(y))


@pytest.mark.parametrize("groups", [4, 2, 32, 3, 1])
def test_mbconv_by_channel_groups_equals_the_whole_block(groups):
    block = _block(8, 0.0).eval()  # 32 hidden channels; 3 groups do not divide them
    block.hidden_groups = groups
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _whole(block, x), rtol=0, atol=1e-5)


def test_mbconv_trains_whole_so_drop_path_draws_once_per_sample():
    block = _block(8, 0.5).train()
    x = torch.randn(6, 8, 12, 12)
    torch.manual_seed(1)
    expected = _whole(block, x)
    torch.manual_seed(1)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
