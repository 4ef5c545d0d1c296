"""Speed, one floor below the reference: each module is the fast twin of reference math, tested against it.

  gelu.py, layernorm.py, softmax.py   in-place CPU chains and fused CuPy kernels for ops/gelu, layernorm, softmax
  attention.py                        blocked causal attention (ATTENTION_BLOCK queries at a time) for ops/attention
  adamw.py                            AdamW's step (optim.adamw_update) in torch's order: one scratch, or one kernel
  kernels.py                          FusedKernel: CUDA elementwise kernels, and $MINIFT_FUSED to switch them off
  parallel.py                         a batch split across CPU threads (GPT.loss_and_grads per shard, summed)

Which one runs is chosen in one place, minift/dispatch.py ($MINIFT_REFERENCE=1: the reference ops alone).
"""
