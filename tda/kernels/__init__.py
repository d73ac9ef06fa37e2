"""CPU kernels for the paper's CNNs (`CNN`, `CNN3L`): the same losses, gradients, Hessian-vector products and
ensembles as the generic engine, written out layer by layer on channels-last tensors, with C kernels for the
conv-GELU-max-pool blocks (`csrc/`, built on first use by `native`).

layout: which models qualify, their shapes and the kernel layout of their parameters; blocks: the
conv-GELU-pool blocks and the workspace; forward: losses and gradients; ensemble: LOO and ATS members;
grads: factored per-sample gradients; hvp: Hessian-vector products; native: the C library.
Nothing here decides when to run: `tda.dispatch` does, for every caller.
"""
