"""Fine-tuning: a classifier on (possibly noisy) labels — label noise, robust objectives, self-adaptive training,
selective classification — with its workflow and report section.

Kept empty of imports: ``finetune_schema`` is read by :mod:`selfsup.config` at the bottom of the pipeline."""
