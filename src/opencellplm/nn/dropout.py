"""Dropout whose CPU mask comes from uniform draws: the same distribution as :class:`torch.nn.Dropout`, about three
times as fast on this project's CPU (700 x 2,048 elements at p=0.5, 2 threads: 19 ms -> 6 ms a call, with
``bernoulli_`` about a tenth of an 85M fine-tuning step). The draws differ from torch's, so seeded runs differ
from those of earlier versions. On other devices it is ``torch.nn.Dropout`` itself."""

from __future__ import annotations

import torch
from torch import nn


class _UniformMaskDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = torch.rand(x.shape, device=x.device).ge_(p)  # 1.0 with probability 1 - p
        ctx.p = p
        ctx.save_for_backward(keep.bool())  # a byte per element, as torch.nn.Dropout keeps
        return x * keep.mul_(1.0 / (1.0 - p)).to(x.dtype)  # 0 and 1/(1-p), rounded to x's dtype as torch does

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad.masked_fill(~keep, 0).mul_(1.0 / (1.0 - ctx.p)), None


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` (same arguments, same state), with a faster mask on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.p == 1.0 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        return _UniformMaskDropout.apply(x, self.p)
