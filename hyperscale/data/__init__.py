"""Multi-task data: task registry, GLUE split protocol, sampler, metrics.

Heavy dependencies (``datasets``, ``torch``, ``transformers``) are imported
only by the functions that need them.
"""

from .errors import DataError
from .loading import (
                      HUB,
                      SPLITS,
                      TaskSplits,
                      columns_as_lists,
                      load_multitask_splits,
                      load_task_splits,
                      protocol_fingerprint,
                      resolve_local_files,
)
from .metrics import (
                      accuracy,
                      average_metrics,
                      compute_task_metrics,
                      count_invalid,
                      f1,
                      matthews_corr,
                      parse_prediction,
                      pearson,
                      spearman,
)
from .sample import SAMPLE_TASKS, build_sample, sample_data_dir
from .sampler import MIXED, SAME_TASK, MultiTaskSampler, temperature_probabilities
from .tasks import (
                      LARGE,
                      OFFICIAL,
                      SMALL,
                      TASKS,
                      Task,
                      format_example,
                      get_task,
                      label_to_target,
                      parse_label,
                      round_stsb,
)
from .specs import SpecTask, TaskRegistry, build_registry, registry_for_export, registry_from_config
from .tokenization import (
                      DEFAULT_SPIECE_MODEL,
                      Seq2SeqCollator,
                      default_tokenizer,
                      load_tokenizer,
                      tokenize_splits,
                      tokenizer_fingerprint,
)

__all__ = [
    "DataError", "HUB", "SPLITS", "TaskSplits", "load_multitask_splits", "load_task_splits",
    "protocol_fingerprint", "resolve_local_files", "columns_as_lists", "accuracy", "average_metrics",
    "compute_task_metrics", "count_invalid", "f1", "matthews_corr", "parse_prediction",
    "pearson", "spearman", "SAMPLE_TASKS", "build_sample", "sample_data_dir", "MIXED",
    "SAME_TASK", "MultiTaskSampler", "temperature_probabilities", "LARGE", "OFFICIAL", "SMALL",
    "TASKS", "Task", "format_example", "get_task", "label_to_target", "parse_label",
    "round_stsb", "DEFAULT_SPIECE_MODEL", "Seq2SeqCollator", "default_tokenizer",
    "load_tokenizer", "tokenize_splits", "tokenizer_fingerprint",
    "SpecTask", "TaskRegistry", "build_registry", "registry_for_export", "registry_from_config",
]
