"""What each command does end to end — train, then evaluate, then report — on top of the pipeline's stages
(``data`` → ``augment`` → ``models`` → ``methods`` → ``train`` → ``evaluate`` → ``report``). Nothing below this
package imports it."""
from .evaluate import evaluate_and_report
from .finetune import finetune
from .pretrain import pretrain
from .stream import sequence, stream

__all__ = ["evaluate_and_report", "finetune", "pretrain", "sequence", "stream"]
