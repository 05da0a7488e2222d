"""seeyou-ml: multilingual image-text alignment on the Hugging Face stack.

Importing the package registers [`SeeYouConfig`], [`SeeYouModel`] and [`SeeYouProcessor`] with `AutoConfig`,
`AutoModel` (and `AutoModelForZeroShotImageClassification`, for the zero-shot image classification pipeline) and
`AutoProcessor` under the model type `"seeyou"`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor

from .configuration import SeeYouConfig, SeeYouGroundingConfig
from .grounding import resolve_reference
from .losses import contrastive_loss
from .modeling import SeeYouModel, SeeYouOutput, SeeYouPreTrainedModel
from .processing import SeeYouProcessor

__version__ = "0.1.0"

AutoConfig.register(SeeYouConfig.model_type, SeeYouConfig, exist_ok=True)
AutoModel.register(SeeYouConfig, SeeYouModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(SeeYouConfig, SeeYouModel, exist_ok=True)
AutoProcessor.register(SeeYouConfig, SeeYouProcessor, exist_ok=True)

__all__ = [
    "SeeYouConfig",
    "SeeYouGroundingConfig",
    "SeeYouModel",
    "SeeYouOutput",
    "SeeYouPreTrainedModel",
    "SeeYouProcessor",
    "contrastive_loss",
    "resolve_reference",
]
