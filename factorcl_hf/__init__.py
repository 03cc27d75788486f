"""factorcl-hf: Factorized Contrastive Learning (FactorCL, NeurIPS 2023) as a Hugging Face-style
pretrained-model package.

``import factorcl_hf`` registers ``FactorCLConfig`` / ``FactorCLModel`` with ``AutoConfig``,
``AutoModel`` and ``AutoModelForZeroShotImageClassification`` under model type ``"factorcl"``.
"""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

from .configuration_factorcl import FactorCLConfig
from .modeling_factorcl import FactorCLEmbeddings, FactorCLModel, FactorCLOutput

AutoConfig.register(FactorCLConfig.model_type, FactorCLConfig, exist_ok=True)
AutoModel.register(FactorCLConfig, FactorCLModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(FactorCLConfig, FactorCLModel, exist_ok=True)
# Saved folders carry the code (auto_map), so `trust_remote_code=True` loads them where this
# package is not installed.
FactorCLConfig.register_for_auto_class()
FactorCLModel.register_for_auto_class("AutoModel")

__all__ = ["__version__", "FactorCLConfig", "FactorCLModel", "FactorCLOutput", "FactorCLEmbeddings"]
