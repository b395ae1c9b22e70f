"""KFP components: one thin @dsl.component per pipeline stage.

Each component's body imports taudis and calls one function; the logic, and its tests, live in the
library. Components are declared with install_kfp_package=False and no packages_to_install: the
container images (and a local environment) already hold taudis and its pinned dependencies.
"""

from taudis_kfp.components.export import export_tasks, report_round
from taudis_kfp.components.labels import check_parameters, ingest_labels, reveal_oracle_labels
from taudis_kfp.components.model import evaluate_model, infer_instances, train_model
from taudis_kfp.components.rounds import claim_round, close_round, commit_round
from taudis_kfp.components.select import (
    oversample_instances,
    score_uncertainty,
    select_baseline,
    select_coreset,
    select_max_k_cover,
    vote_images,
)

__all__ = [
    "check_parameters",
    "claim_round",
    "close_round",
    "commit_round",
    "evaluate_model",
    "export_tasks",
    "infer_instances",
    "ingest_labels",
    "oversample_instances",
    "report_round",
    "reveal_oracle_labels",
    "score_uncertainty",
    "select_baseline",
    "select_coreset",
    "select_max_k_cover",
    "train_model",
    "vote_images",
]
