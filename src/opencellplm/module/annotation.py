"""The annotation module: the backbone with a cell-type head on the cell embedding, and its loss.

As scvi-tools' ``SCANVAE`` extends ``VAE``, :class:`AnnotationModule` extends
:class:`~opencellplm.module.CellPLMModule`, so its state-dict keys (``head.*`` beside the backbone's) are those of
the annotators saved when the head lived in the backbone. The head's settings are not architecture of the
backbone: they left :class:`~opencellplm.config.ModelConfig` and travel beside it, under the ``"annotation"`` key
of a checkpoint's ``config.json`` (:func:`module_config`, :func:`read_module_config`), where they always were.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..config import AnnotationHeadConfig, ConfigError, ModelConfig
from .cellplm import CellPLMModule
from .heads import AnnotationHead
from .losses import LossOutput, annotation_loss, with_latent_terms
from .outputs import CellBatch, CellPLMOutput

#: Key of the head's settings in a checkpoint's ``config.json``.
ANNOTATION_KEY = "annotation"


class AnnotationModule(CellPLMModule):
    """The backbone of ``config`` with a cell-type head of ``head`` on its cell embedding (``logits`` of every
    forward)."""

    def __init__(self, config: ModelConfig, head: AnnotationHeadConfig):
        if not isinstance(head, AnnotationHeadConfig):
            raise ConfigError(f"head must be an AnnotationHeadConfig, got {head!r}")
        super().__init__(config)
        self.head_config = head
        self.head = AnnotationHead(config.latent.dim, head)

    def forward(self, batch: CellBatch, **kwargs: Any) -> CellPLMOutput:
        out = super().forward(batch, **kwargs)
        return replace(out, logits=self.head(out.latent.embedding))

    def _like(self, config: ModelConfig) -> AnnotationModule:
        return AnnotationModule(config, self.head_config)


def classification_loss(out: CellPLMOutput, labels: torch.Tensor, *, mask: torch.Tensor | None = None) -> LossOutput:
    """Cross-entropy of an :class:`AnnotationModule` forward's logits against ``labels`` (class ids of the input
    cells, before any training-time cell dropping), over the cells selected by ``mask`` (default: all), plus the
    latent terms. Zero when no selected cell survived dropping."""
    if out.logits is None:
        raise ValueError("this output has no logits: it did not come from an AnnotationModule")
    labels = torch.as_tensor(labels, device=out.logits.device)
    if labels.ndim != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be a 1-D tensor of integer class ids, got {labels.dtype} {tuple(labels.shape)}")
    labels = labels[out.kept_cells]
    logits = out.logits
    if mask is not None:
        mask = torch.as_tensor(mask, device=out.logits.device)[out.kept_cells]
        logits, labels = logits[mask], labels[mask]
    return with_latent_terms(out, annotation_loss(logits, labels))


def build_module(config: ModelConfig, head: AnnotationHeadConfig | None = None) -> CellPLMModule:
    """The backbone of ``config``, with a cell-type head when ``head`` is given."""
    return CellPLMModule(config) if head is None else AnnotationModule(config, head)


def module_config(module: CellPLMModule) -> dict[str, Any]:
    """What a checkpoint's ``config.json`` holds for ``module``: its config, and its head's under ``"annotation"``
    (null for a backbone alone, as every checkpoint written so far has it)."""
    head = module.head_config if isinstance(module, AnnotationModule) else None
    return module.config.to_dict() | {ANNOTATION_KEY: None if head is None else head.to_dict()}


def read_module_config(data: dict[str, Any]) -> tuple[ModelConfig, AnnotationHeadConfig | None]:
    """The config and head settings of a ``config.json`` (:func:`module_config`'s form, or a config without
    the ``"annotation"`` key); :class:`~opencellplm.config.ConfigError` on a malformed one."""
    if not isinstance(data, dict):
        raise ConfigError(f"a model config must be a mapping, got {type(data).__name__}")
    head = data.get(ANNOTATION_KEY)
    config = ModelConfig.from_dict({k: v for k, v in data.items() if k != ANNOTATION_KEY})
    return config, None if head is None else AnnotationHeadConfig.from_dict(head)
