"""Named jobs: the pipeline's stages as asset jobs, for the Launchpad, schedules and job backfills.

`quant-assets materialize` and the UI's "Materialize all" launch *asset* backfills over a
selection instead (Dagster plans their runs across stages by the assets' BackfillPolicy); these
jobs are the named entry points for running one stage of chosen partitions by hand."""

import dagster as dg

market_data_job = dg.define_asset_job(
    "market_data",
    selection=dg.AssetSelection.groups("market_data"),
    description="OHLCV bars of chosen symbol|timeframe partitions (validated, incremental).",
)
research_job = dg.define_asset_job(
    "research",
    selection=dg.AssetSelection.assets("features", "labels"),
    description="Features with the multi-timeframe snapshot, and labels, with their leakage checks.",
)
training_job = dg.define_asset_job(
    "training",
    selection=dg.AssetSelection.assets(
        "training_dataset", "walk_forward_splits", "challenger_model"
    ),
    description="Training datasets, purged splits and a challenger model per partition.",
)
promotion_job = dg.define_asset_job(
    "promotion",
    selection=dg.AssetSelection.assets("champion_challenger_evaluation", "champion"),
    description="Champion/challenger evaluation with the promotion gates, and the decision.",
)
serving_job = dg.define_asset_job(
    "serving",
    selection=dg.AssetSelection.assets("signals"),
    description="The champion's (or the winning ensemble's) signals written to SQL.",
)

PIPELINE_JOBS = [market_data_job, research_job, training_job, promotion_job, serving_job]
