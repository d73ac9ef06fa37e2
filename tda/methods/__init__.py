"""The five TDA methods of DESIGN section 5, as pure functions over a model, its parameters and tensors."""
