"""Training CRNNH: datasets, the backbone feature cache, and the training loop (``musichash train``)."""
