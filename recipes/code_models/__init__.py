"""The recipes of the shipped code models: the interim binarisers and the CRNNH heads (README.md)."""
