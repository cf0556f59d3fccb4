"""Model loading (embedded defaults, Hugging Face ids and local folders, offline) and sampling from
a causal LM (`generation`, the one LM sampler; `sampler`, the model it samples from)."""

from robust_rlhf._lazy import lazy_exports

_EXPORTS = {
    "EMBEDDED_MODELS": ".hub",
    "load_backbone": ".hub",
    "load_causal_lm": ".hub",
    "load_tokenizer": ".hub",
    "resolve_model_path": ".hub",
    "SamplingConfig": ".generation",
    "generate": ".generation",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
