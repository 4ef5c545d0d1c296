"""minift's data layer: generated corpora and tasks, the user's files, and batching. Nothing is downloaded.

Corpora     World, world_corpus, pydoc_corpus, load_text_files
Tasks       load_task, load_classification, load_generation, TaskSplit, TASK_NAMES (built-in: sentiment, facts)
Batching    concat_documents, lm_windows, sequential_windows, classification_batch, completion_batch, BatchIterator
Sources     LMSource, ClassificationSource, CompletionSource, task_source, encode_split (for minift.training.train)
Shipped     regenerate (also `python -m minift.data`), data_dir, checkout_data_dir

The tokenizer lives in minift.formats.tokenizer (Tokenizer).
"""
from .batching import (IGNORE_INDEX, BatchIterator, classification_batch, completion_batch, concat_documents,
                       lm_windows, sequential_windows)
from .build import regenerate, tokenizer_corpus
from .loaders import (TaskSplit, checkout_data_dir, data_dir, load_classification, load_generation, load_task,
                      load_text_files, read_records)
from .pydoc_corpus import pydoc_corpus
from .sources import ClassificationSource, CompletionSource, LMSource, encode_split, task_source
from .tasks import SIZES, SPLITS, TASK_NAMES, task_info, task_records, write_tasks
from .world import WORLD_SEED, World, world_corpus

__all__ = [
    "World", "world_corpus", "WORLD_SEED", "pydoc_corpus", "load_text_files",
    "load_task", "load_classification", "load_generation", "read_records", "TaskSplit", "TASK_NAMES", "SPLITS",
    "SIZES", "task_records", "task_info", "write_tasks",
    "concat_documents", "lm_windows", "sequential_windows", "classification_batch", "completion_batch",
    "BatchIterator", "IGNORE_INDEX",
    "LMSource", "ClassificationSource", "CompletionSource", "task_source", "encode_split",
    "regenerate", "tokenizer_corpus", "data_dir", "checkout_data_dir",
]
