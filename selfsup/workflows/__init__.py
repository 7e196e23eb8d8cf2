"""What each command does end to end — train, then evaluate, then report — on top of the pipeline's stages
(``data`` → ``augment`` → ``models`` → ``methods`` → ``train`` → ``evaluate`` → ``report``). Nothing below this
package imports it."""
from .evaluation import evaluate_and_report
from .pretrain import pretrain

__all__ = ["evaluate_and_report", "pretrain"]
