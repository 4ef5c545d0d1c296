"""minift: full fine-tuning and LoRA side by side, with hand-written forward and backward passes in NumPy/CuPy."""
from .backend import get_xp, gpu_available, resolve_device, to_numpy
from .config import GPTConfig
from .errors import MiniftError
from .gradcheck import GradReport, check_function, check_op
from .lora import LoRA, LoRAConfig, attach_lora, load_peft
from .model import GPT
from .version import __version__

__all__ = ["GPT", "GPTConfig", "MiniftError", "GradReport", "check_function", "check_op", "get_xp", "gpu_available",
           "resolve_device", "to_numpy", "__version__",
           "LoRA", "LoRAConfig", "attach_lora", "load_peft"]
