"""The thin Dagster layer: one module per stage, each loading inputs, calling `quant_assets.lib`,
attaching metadata. Dagster's own preview/beta notices for APIs we rely on deliberately (partitioned
asset checks, multi-dimension partition mappings) are silenced here, once."""

import warnings

import dagster as dg

for _category in (dg.PreviewWarning, dg.BetaWarning, dg.SupersessionWarning):
    warnings.filterwarnings("ignore", category=_category)
