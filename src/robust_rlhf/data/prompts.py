"""Prompts: the built-in short movie-review openings (2-8 tokens), like the IMDB prompts that
seed 002 and Ziegler et al. continue with a policy (deterministic, offline, no download); prompt
files; the policy recipes' ``data:`` section (`PromptDataConfig`) and its train / held-out split."""

from __future__ import annotations

from dataclasses import dataclass

_SUBJECTS = [
    "This movie", "The film", "This film", "The acting", "The plot", "The story",
    "The director", "The ending", "The soundtrack", "The cast", "This sequel", "The script",
]
_VERBS = ["was", "is", "felt", "seemed", "turned out"]
_OPENINGS = [
    "I watched this", "My wife and I", "I went to see", "Honestly,", "I have to say",
    "After seeing the trailer,", "Last night I saw", "I rented this", "When I first heard",
    "As a fan of the book,", "I expected", "Going into this movie,", "I can't believe",
    "Every scene", "From the first minute,", "Nothing about this", "Surprisingly,",
    "I was dragged to", "Ten years later,", "My kids",
]


def builtin_prompts() -> list[str]:
    """All built-in review openings (162), in a fixed order."""
    prompts = [f"{s} {v}" for s in _SUBJECTS for v in _VERBS]
    prompts += [f"{s} {v} really" for s in _SUBJECTS for v in _VERBS[:2]]
    prompts += [f"{s} {v} not" for s in _SUBJECTS[:6] for v in _VERBS[:2]]
    prompts += [f"{s} {v} quite" for s in _SUBJECTS[6:] for v in _VERBS[:2]]
    prompts += [f"{s} {v} a bit" for s in _SUBJECTS for v in _VERBS[2:4]]
    prompts += list(_OPENINGS)
    prompts += [f"{s} was so" for s in _SUBJECTS[:10]]
    return prompts


def split_prompts(prompts: list[str], fractions: tuple[float, ...], seed: int) -> list[list[str]]:
    """Deterministic shuffled split of prompts by fractions (the last part takes the rest)."""
    import random

    order = list(prompts)
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for i, f in enumerate(fractions):
        end = len(order) if i == len(fractions) - 1 else start + int(round(f * len(order)))
        parts.append(order[start:end])
        start = end
    return parts


@dataclass
class PromptDataConfig:
    """Where prompts come from and how they are split."""

    prompts: str | None = None
    """prompt file (JSONL with a `prompt` field, or plain text one per line); null = the 162 built-in review openings"""
    eval_fraction: float = 0.2
    """share of prompts held out for the gold evaluation (never trained on)"""
    split_seed: int = 0
    """seed of the train / held-out split"""

    def __post_init__(self) -> None:
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")


def load_prompts_file(path: str) -> list[str]:
    """Prompts from rows with a ``prompt`` text field (JSONL, JSON, CSV, Parquet, a datasets folder or
    ``hf:org/name[:split]``) or from plain text, one prompt per line (blank lines skipped).

    The reading rules are those of the preference data (`robust_rlhf.data.preferences`): a byte-order
    mark is dropped, JSON Lines are split on "\\n" only (U+2028 inside a string is an ordinary
    character), and every error names the file and the line. An empty prompt is refused."""
    from pathlib import Path

    from robust_rlhf.data.preferences import _json_loads, _read_text, _text_field, iter_source
    from robust_rlhf.errors import UserError

    p = Path(path)  # a FIFO or device is refused by the reader (`_read_text`, `_iter_rows`)
    if str(path).startswith("hf:") or p.is_dir() or p.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        if not str(path).startswith("hf:") and not p.exists():
            raise UserError(f"prompts file {str(path)!r} does not exist")
        name, rows = iter_source(path)
    else:
        if not p.exists():
            raise UserError(f"prompts file {str(path)!r} does not exist")
        name, lines = str(p), _read_text(p).split("\n")
        numbered = [(i, line.removesuffix("\r")) for i, line in enumerate(lines, 1) if line.strip()]
        if numbered and numbered[0][1].lstrip().startswith("{"):  # JSON Lines under another suffix
            rows = ((f"line {i}", _json_loads(line, p, f"line {i}")) for i, line in numbered)
        else:  # plain text: the line is the prompt
            rows = ((f"line {i}", {"prompt": line}) for i, line in numbered)
    prompts: list[str] = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{name}: {where}: expected an object with a text field 'prompt'")
        if "prompt" not in row:
            raise UserError(f"{name}: {where}: missing field 'prompt' (fields: {', '.join(map(str, row)) or 'none'})")
        if isinstance(row["prompt"], list):
            raise UserError(f"{name}: {where}: field 'prompt': expected text, got a list of messages "
                            "(the policy recipes sample from plain-text prompts)")
        prompts.append(_text_field(row["prompt"], f"{name}: {where}", "prompt"))
    if not prompts:
        raise UserError(f"prompts file {str(path)!r} holds no prompts")
    return prompts


def train_eval_prompts(cfg: PromptDataConfig) -> tuple[list[str], list[str]]:
    """(training prompts, held-out evaluation prompts)."""
    from robust_rlhf.errors import UserError

    prompts = load_prompts_file(cfg.prompts) if cfg.prompts else builtin_prompts()
    if len(prompts) < 2:
        raise UserError("need at least 2 prompts (one to train on, one held out)")
    train, held_out = split_prompts(prompts, (1 - cfg.eval_fraction, cfg.eval_fraction), cfg.split_seed)
    if not train or not held_out:
        raise UserError(f"data.eval_fraction={cfg.eval_fraction} leaves an empty split of {len(prompts)} prompts")
    return train, held_out


# The large task's openings: 59 subjects in 8 review domains x 17 templates = 1,003 distinct prompts.
LARGE_DOMAINS: dict[str, list[str]] = {
    "movies": ["This movie", "The film", "The acting", "The plot", "The ending", "The soundtrack", "The cast",
               "The script", "The director", "This sequel", "The special effects", "The dialogue",
               "The cinematography"],
    "restaurants": ["The restaurant", "The food", "The waiter", "The pizza", "The dessert", "The menu",
                    "Our dinner", "The coffee"],
    "hotels": ["This hotel", "Our room", "The staff", "The breakfast", "The pool", "The view", "The location"],
    "books": ["The novel", "This book", "The author", "The first chapter", "The characters", "The writing"],
    "gadgets": ["My new phone", "This laptop", "The headphones", "The battery", "The camera", "The screen",
                "This blender", "The keyboard"],
    "music": ["This album", "The concert", "The singer", "The band", "The new song", "The lyrics"],
    "games": ["This game", "The graphics", "The gameplay", "The story mode", "The controls"],
    "travel": ["The flight", "The tour", "The museum", "The beach", "The city", "Our trip"],
}
LARGE_TEMPLATES: list[str] = [
    "{S} was", "{S} is", "{S} felt", "{S} seemed", "{S} turned out to be", "{S} was really", "{S} was not",
    "{S} was quite", "{S} was a bit", "{S} was so", "{S} was surprisingly", "{S} was absolutely",
    "Honestly, {s} was", "I think {s} is", "Overall, {s} was", "To be fair, {s} felt",
    "Compared to last time, {s} was",
]


def large_prompts() -> list[str]:
    """The large task's openings (1,003), in a fixed order: every template of `LARGE_TEMPLATES`
    filled with every subject of `LARGE_DOMAINS` ({S} capitalised, {s} lower-cased first letter)."""
    prompts = []
    for subjects in LARGE_DOMAINS.values():
        for subject in subjects:
            lower = subject[0].lower() + subject[1:]
            prompts += [t.format(S=subject, s=lower) for t in LARGE_TEMPLATES]
    return prompts


def large_prompt_domain(prompt: str) -> str:
    """The domain (a key of `LARGE_DOMAINS`) of one of `large_prompts()`."""
    for domain, subjects in LARGE_DOMAINS.items():
        for subject in subjects:
            lower = subject[0].lower() + subject[1:]
            if any(prompt == t.format(S=subject, s=lower) for t in LARGE_TEMPLATES):
                return domain
    raise KeyError(prompt)
