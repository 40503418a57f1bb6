"""hf_prune."""
