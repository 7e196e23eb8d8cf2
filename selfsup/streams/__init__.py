"""Streams: pre-training on chunks as they arrive — chunk discovery, the stream trainer, continual-learning
strategies (replay, MAS/EWC, distillation), continual metrics, the streaming study, and their report section.

Kept empty of imports: ``stream_schema`` is read by :mod:`selfsup.config` at the bottom of the pipeline."""
