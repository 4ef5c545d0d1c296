"""LoRA: low-rank adapters on GPT-2's linears, y = x W + b + s · dropout(x) Aᵀ Bᵀ with W frozen, the backward
written out (Hu et al. 2021, arXiv 2106.09685, as Hugging Face PEFT implements it; DoRA, rsLoRA and PiSSA too).

Read in this order; each module imports only those above it (PEFT's config / layer / model split, plus the files):

    config.py      LoRAConfig (r, alpha, targets, rslora, dropout, init, use_dora, quant, double_quant) and which
                   modules it adapts
    op.py          lora_forward / lora_backward: dA, dB, dx, and the dW a frozen W skips; the notation table
                   (the paper's and PEFT's s·BA, minift's s·AᵀBᵀ, the article's W + ABᵀ); and LoRALinear, the
                   adapter of one linear that runs them: forward, backward, delta_weight, merge / unmerge
    inits.py       how A and B start: PEFT's default and gaussian inits, PiSSA (Meng et al. 2024)
    dora.py        DoRALinear and its op: magnitude and direction (Liu et al. 2024)
    qlora.py       QLoRALinear and its op: LoRA on a frozen W kept in 4 bits (minift/quant.py), dequantised where
                   it is used (Dettmers et al. 2023)
    peft_files.py  PEFT's adapter folder: what save_peft writes, the model card, what load_peft checks
    attach.py      attach_lora, load_peft, and the LoRA handle they return (merge, merged_model, train/eval, ...)
"""
from .attach import LoRA, adapter_rng, attach_lora, load_peft
from .config import ALL_LINEAR, LoRAConfig, resolve_modules
from .dora import DoRALinear
from .inits import init_factors, pissa_factors
from .op import LoRALinear, lora_backward, lora_forward
from .peft_files import MODEL_CARD_FILE, PEFT_FORMAT_VERSION, PEFT_HEAD_KEY, PEFT_PREFIX
from .qlora import QLoRALinear, qlora_backward, qlora_forward

__all__ = ["LoRA", "LoRAConfig", "LoRALinear", "DoRALinear", "QLoRALinear", "attach_lora", "load_peft",
           "adapter_rng", "lora_backward", "lora_forward", "qlora_backward", "qlora_forward", "init_factors",
           "pissa_factors", "resolve_modules", "ALL_LINEAR", "MODEL_CARD_FILE", "PEFT_FORMAT_VERSION",
           "PEFT_HEAD_KEY", "PEFT_PREFIX"]
