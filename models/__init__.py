"""Model zoo for hvi: registered ``nn.Module`` builders.

Importing this package registers the built-in models ``bayes_unet``,
``conv4``, ``mlp`` and ``siren``. Build one with :func:`get_model`; register
your own builder with :func:`register_model`.
"""

from .registry import describe_model, get_model, list_models, model_defaults, register_model
from .conv4 import conv4
from .mlp import mlp
from .siren import siren
from .unet import bayes_unet

__all__ = [
    "register_model",
    "get_model",
    "list_models",
    "describe_model",
    "model_defaults",
    "bayes_unet",
    "conv4",
    "mlp",
    "siren",
]
