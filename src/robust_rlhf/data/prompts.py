"""Built-in prompts: short movie-review openings (2-8 tokens), like the IMDB prompts that
seed 002 and Ziegler et al. continue with a policy. Deterministic, offline, no download."""

from __future__ import annotations

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
