"""What a user sees after each active-learning round: Markdown for the KFP UI, HTML pages, learning curves.

No KFP and no torch here: the report step runs on the CPU image and in the local demo.
"""

from taudis.report.curves import learning_curve_bytes, learning_curve_png
from taudis.report.html import RoundSection, campaign_html, round_html
from taudis.report.inputs import ReportInputError, load_pool_images, load_selection, validate_history
from taudis.report.markdown import round_markdown

__all__ = [
    "ReportInputError",
    "RoundSection",
    "campaign_html",
    "learning_curve_bytes",
    "learning_curve_png",
    "load_pool_images",
    "load_selection",
    "round_html",
    "round_markdown",
    "validate_history",
]
