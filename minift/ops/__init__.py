"""Ops: adjacent forward/backward pairs, one module per op family.

Conventions shared by every op (see each module's docstring for its math):
  - `x_forward(inputs...) -> (out, cache)`; `x_backward(dout, cache, need_...=True) -> gradients`, in the order of
    the forward's differentiable inputs (integer ids and boolean masks have no gradient and are skipped). An op with
    one differentiable input returns that gradient alone; with several, a tuple.
  - `need_<grad>=False` skips computing a gradient (it comes back as None): frozen weights cost nothing.
  - Array code uses whatever module the inputs live in (NumPy or CuPy) and keeps their dtype.
"""
from .linear import linear_backward, linear_forward

__all__ = ["linear_forward", "linear_backward"]
