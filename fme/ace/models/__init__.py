"""Network modules: ``[batch, n_in, lat, lon] -> [batch, n_out, lat, lon]``.

Importing this package registers every module type with ``MODULE_REGISTRY``.
"""

# conv_net, pointwise and sfno_config are imported for their registration side effect.
from fme.ace.models import conv_net, pointwise, sfno_config  # noqa: F401
from fme.ace.models.registry import MODULE_REGISTRY, ModuleConfig, ModuleSelector

__all__ = ["MODULE_REGISTRY", "ModuleConfig", "ModuleSelector"]
