"""Model half of hyperscale: attach points, hypernetworks, adapter math, task context, wrapper."""
from .context import AdapterContext, AdapterWeights, adapter_context
from .model import METHODS, HyperscaleConfig, HyperscaleModel, load_backbone

__all__ = ["AdapterContext", "AdapterWeights", "adapter_context", "METHODS", "HyperscaleConfig", "HyperscaleModel",
           "load_backbone"]
