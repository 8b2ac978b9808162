"""Network modules: ``[batch, n_in, lat, lon] -> [batch, n_out, lat, lon]``.

Importing this package registers every module type with ``MODULE_REGISTRY``.
"""

# These modules are imported for their registration side effect.
from fme.ace.models import (  # noqa: F401
    conv_net,
    noise_sfno_config,
    pointwise,
    sfno_config,
)
from fme.ace.models.registry import MODULE_REGISTRY, ModuleConfig, ModuleSelector

__all__ = ["MODULE_REGISTRY", "ModuleConfig", "ModuleSelector"]
