"""The thin Dagster layer: one module per stage, each loading inputs, calling `quant_assets.lib`,
attaching metadata. Dagster's own preview/beta notices for APIs we rely on deliberately (partitioned
asset checks, multi-dimension partition mappings) are silenced here, once."""

import warnings

import dagster as dg

for _category in (dg.PreviewWarning, dg.BetaWarning, dg.SupersessionWarning):
    warnings.filterwarnings("ignore", category=_category)
# A run of training_dataset (no backfill policy) with challenger_model (batched) warns on every CLI
# run; policies only shape backfills, and the retrain backfills target batched assets alone.
warnings.filterwarnings("ignore", message=r"Asset job .* materializes assets with varying")
