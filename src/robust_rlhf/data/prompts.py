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
