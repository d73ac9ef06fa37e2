"""The generic engine every TDA method runs on, for any `nn.Module`: functional calls and losses, per-sample
gradients, curvature-vector products, ensembles of stacked members, a functional Adam and memory budgets.

Nothing here knows a method or a model family; the CNN CPU kernels (`tda.kernels`) are a faster path for the
paper's CNNs, and `tda.dispatch` decides which of the two computes a building block.
"""
