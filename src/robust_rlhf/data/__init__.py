"""Preference data (TRL formats), prompts and the built-in task."""

from robust_rlhf._lazy import lazy_exports

_EXPORTS = {
    "PreferencePair": ".preferences",
    "load_preferences": ".preferences",
    "parse_pair": ".preferences",
    "save_preferences_jsonl": ".preferences",
    "builtin_prompts": ".prompts",
    "split_prompts": ".prompts",
    "PromptDataConfig": ".prompts",
    "load_prompts_file": ".prompts",
    "TaskConfig": ".builtin_task",
    "build_task": ".builtin_task",
    "large_prompts": ".prompts",
    "LargeTaskConfig": ".large_task",
    "build_large_task": ".large_task",
    "load_large_task": ".large_task",
    "draw_pairs": ".large_task",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
