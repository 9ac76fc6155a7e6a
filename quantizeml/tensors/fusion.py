"""The former home of the fused kernels and deferred accumulators, now in
:mod:`quantizeml.recipes.fast_paths` (names kept for the callers of ``unfused`` and
``xla_fusion``)."""
from ..recipes.fast_paths import (Deferred, fused, fuses, fusion_enabled, sum_parts,  # noqa: F401
                                  taping, unfused, xla_fusion)
