"""What users take away from a run: embeddings of their collection, an exported model, nearest neighbours and
near-duplicates, which images to label first, and comparisons of runs.

Kept empty of imports, like every capability package."""
