"""Robustness: common corruptions, adversarial attacks on classifiers built on the features, (self-supervised)
adversarial training, and their workflow and report section.

Kept empty of imports, like every capability package."""
