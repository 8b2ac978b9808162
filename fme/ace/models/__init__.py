"""Network modules: ``[batch, n_in, lat, lon] -> [batch, n_out, lat, lon]``.

Importing this package registers every module type with ``MODULE_REGISTRY``.
"""

from fme.ace.models.registry import MODULE_REGISTRY, ModuleConfig, ModuleSelector

# Imported for their registration side effect.
from fme.ace.models import conv_net, pointwise, sfno  # noqa: E402, F401, I001

__all__ = ["MODULE_REGISTRY", "ModuleConfig", "ModuleSelector"]
