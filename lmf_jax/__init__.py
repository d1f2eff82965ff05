"""LMF in JAX/Flax: the reference specification of the model and the training protocol."""
