"""Ops: the reference forward/backward pairs, one module per op family, each written as its formulas.

LayerNorm, attention and GELU have fast twins in minift/fast (in place, fused, blocked), tested against these;
minift/dispatch.py chooses which one the model runs.

Conventions shared by every op (see each module's docstring for its math):
  - `x_forward(inputs...) -> (out, cache)`; `x_backward(dout, cache, need_...=True) -> gradients`, in the order of
    the forward's differentiable inputs (integer ids and boolean masks have no gradient and are skipped). An op with
    one differentiable input returns that gradient alone; with several, a tuple.
  - `need_<grad>=False` skips computing a gradient (it comes back as None): frozen weights cost nothing.
  - Array code uses whatever module the inputs live in (NumPy or CuPy) and keeps their dtype.
"""
from .linear import linear_backward, linear_forward

__all__ = ["linear_forward", "linear_backward"]

from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .pooling import last_token_index, pool_last_backward, pool_last_forward

__all__ += ["embedding_forward", "embedding_backward", "layernorm_forward", "layernorm_backward",
            "gelu_forward", "gelu_backward", "dropout_forward", "dropout_backward",
            "last_token_index", "pool_last_forward", "pool_last_backward"]

from .attention import attention_backward, attention_forward, attention_probabilities
from .cross_entropy import cross_entropy_backward, cross_entropy_forward
from .softmax import log_softmax, softmax, softmax_backward, softmax_forward

__all__ += ["softmax", "log_softmax", "softmax_forward", "softmax_backward", "attention_forward",
            "attention_backward", "attention_probabilities", "cross_entropy_forward", "cross_entropy_backward"]
