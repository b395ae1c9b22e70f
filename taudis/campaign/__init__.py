"""A campaign: its state in storage, the round's state machine, labels in, and the pipeline's steps.

- layout.py: where everything lives (Campaign)
- rounds.py: the round's state machine (claim, evaluate, commit, publish, recover); read it first
- pool.py: the ledger's pool follows the pool file
- ingest.py: annotators' files in incoming/ ingested or quarantined
- labels.py: label parts, the labelled dataset, the oracle
- steps.py: one function per pipeline step
- invariants.py: the invariants every campaign keeps, checked
"""

from taudis.campaign.layout import Campaign
from taudis.campaign.rounds import RoundBusyError, RoundLostError
from taudis.campaign.steps import learning_curve, validate_round_parameters

__all__ = ["Campaign", "RoundBusyError", "RoundLostError", "learning_curve", "validate_round_parameters"]
