"""The words the exact prior understands: objects with aliases, and themes.

A prompt selects the *conditional set* of a finite prior: the objects it names
(any alias, as whole words, plurals allowed), or — when it names no object — the
objects of every theme it names ("a toy", "a plant in a pot"). A prompt that
names nothing known selects nothing; the prior then refuses it with
``Vocabulary.describe()``. Plain data, no torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


def words(text: str) -> tuple[str, ...]:
    """Lower-case words of ``text`` (letters and digits), plurals reduced to the
    singular by dropping a final "s"/"es" ("tulips" → "tulip", "boxes" → "box")."""
    out = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if len(w) > 3 and w.endswith(("ches", "shes", "xes", "sses")):
            w = w[:-2]
        elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return tuple(out)


def _mentions(text_words: tuple[str, ...], alias: str) -> bool:
    """Whether ``alias``'s words occur contiguously in ``text_words``."""
    a = words(alias)
    return bool(a) and any(text_words[i:i + len(a)] == a for i in range(len(text_words) - len(a) + 1))


@dataclass(frozen=True)
class Theme:
    """A named group of objects, e.g. "a toy" → snowman, mushroom, …"""

    name: str                   # shown to users, e.g. "a toy"
    aliases: tuple[str, ...]    # texts that name it, e.g. ("toy", "a toy on a table")
    members: tuple[int, ...]    # object indices


@dataclass(frozen=True)
class Vocabulary:
    """Per object (index k) a display name, a caption and aliases; themes over them."""

    names: tuple[str, ...]
    captions: tuple[str, ...]
    aliases: tuple[tuple[str, ...], ...]
    themes: tuple[Theme, ...] = ()

    def __post_init__(self):
        n = len(self.names)
        if not (len(self.captions) == len(self.aliases) == n):
            raise ValueError(f"Vocabulary: {n} names, {len(self.captions)} captions, {len(self.aliases)} alias lists")
        for theme in self.themes:
            if not theme.members or not all(0 <= k < n for k in theme.members):
                raise ValueError(f"Vocabulary: theme {theme.name!r} has members {theme.members} outside 0..{n - 1}")

    @classmethod
    def from_names(cls, names: list[str]) -> "Vocabulary":
        """Objects known by their names alone (no captions beyond the name, no themes)."""
        return cls(tuple(names), tuple(names), tuple((n,) for n in names))

    def __len__(self) -> int:
        return len(self.names)

    def select(self, text: str) -> tuple[int, ...]:
        """Indices of the objects ``text`` names; if it names none, the members of
        the themes it names; () if it names nothing known."""
        text_words = words(text)
        named = tuple(k for k, aliases in enumerate(self.aliases)
                      if any(_mentions(text_words, a) for a in (self.names[k], *aliases)))
        if named:
            return named
        return tuple(sorted({k for theme in self.themes
                             if any(_mentions(text_words, a) for a in (theme.name, *theme.aliases))
                             for k in theme.members}))

    def describe(self) -> str:
        """One line listing what can be asked for, e.g. "snowman, mushroom (a toy); …"."""
        grouped = set()
        parts = []
        for theme in self.themes:
            parts.append(f"{', '.join(self.names[k] for k in theme.members)} (or the theme '{theme.name}')")
            grouped.update(theme.members)
        loose = [self.names[k] for k in range(len(self)) if k not in grouped]
        if loose:
            parts.append(", ".join(loose))
        return "; ".join(parts)
