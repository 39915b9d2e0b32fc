"""Backbones: a name -> constructor table, torchvision/timm adapters and an input normaliser.

``build_model(name, num_classes, ...)`` (``factory.py``) returns an ``nn.Module`` mapping float
NCHW images (or, for ``"mlp"``, float (N, D) vectors) to logits (N, num_classes); wrap it in
``InputNormalizer(model, mean, std)`` (``normalize.py``) to feed the uint8 NCHW batches of the
data pipeline (``ResizeInput`` resizes them first to a pretrained backbone's resolution).  The
networks themselves are in ``wrn.py`` (WideResNet) and ``cnn.py`` (``SmallCNN``, ``MLP``);
``hf.py`` holds the Hugging Face text backbones (``"hf:<name or folder>"``: ``HFClassifier``,
``load_tokenizer``, ``pack_text``; transformers is imported only when one is built) and
``pretrained.py`` the weight loading of pretrained image backbones. This module only re-exports.
"""

from semimatch.models.cnn import MLP, SmallCNN
from semimatch.models.factory import MODELS, build_model, count_parameters, set_bn_momentum
from semimatch.models.hf import HFClassifier, load_tokenizer, pack_text
from semimatch.models.normalize import InputNormalizer, ResizeInput
from semimatch.models.wrn import WideResNet, wrn_28_2, wrn_28_8, wrn_37_2

__all__ = [
    "MODELS",
    "MLP",
    "HFClassifier",
    "InputNormalizer",
    "ResizeInput",
    "SmallCNN",
    "WideResNet",
    "build_model",
    "count_parameters",
    "load_tokenizer",
    "pack_text",
    "set_bn_momentum",
    "wrn_28_2",
    "wrn_28_8",
    "wrn_37_2",
]
