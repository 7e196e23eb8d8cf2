"""What users take away from a trained encoder: embeddings of a collection written to disk, the model exported for
deployment, nearest neighbours and near-duplicates, and which images to label first."""
