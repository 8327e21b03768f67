"""The words the exact prior understands: objects (variants) grouped into families,
families grouped into themes.

A prompt selects the *conditional set* of a finite prior:

- the variants it names by their own words ("a pink duck": that variant alone);
- every variant of each family it names ("a rubber duck": all the ducks), unless
  it names some of that family's variants, which then stand for the family;
- when it names no variant and no family, every variant of each theme it names
  ("a toy", "a plant in a pot").

Aliases match as whole words, plurals allowed. A prompt that names nothing known
selects nothing; the prior then refuses it with ``Vocabulary.describe()``.
Plain data, no torch.
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
class Group:
    """A named group of objects: a family ("rubber duck" → its variants) or a
    theme ("a toy" → the variants of snowman, mushroom, …)."""

    name: str                   # shown to users, e.g. "rubber duck", "a toy"
    aliases: tuple[str, ...]    # texts that name it, e.g. ("duck", "bath duck")
    members: tuple[int, ...]    # object indices

    def named_in(self, text_words: tuple[str, ...]) -> bool:
        return any(_mentions(text_words, a) for a in (self.name, *self.aliases))


@dataclass(frozen=True)
class Vocabulary:
    """Per object k a display name, a description and its own aliases (texts that
    name it alone); families and themes over the objects. An object in no family
    is a family of its own."""

    names: tuple[str, ...]
    captions: tuple[str, ...]
    aliases: tuple[tuple[str, ...], ...]
    themes: tuple[Group, ...] = ()
    families: tuple[Group, ...] = ()

    def __post_init__(self):
        n = len(self.names)
        if not (len(self.captions) == len(self.aliases) == n):
            raise ValueError(f"Vocabulary: {n} names, {len(self.captions)} captions, {len(self.aliases)} alias lists")
        for kind, groups in (("theme", self.themes), ("family", self.families)):
            for group in groups:
                if not group.members or not all(0 <= k < n for k in group.members):
                    raise ValueError(f"Vocabulary: {kind} {group.name!r} has members {group.members} "
                                     f"outside 0..{n - 1}")
        in_families = [k for f in self.families for k in f.members]
        if len(in_families) != len(set(in_families)):
            raise ValueError("Vocabulary: an object belongs to more than one family")

    @classmethod
    def from_names(cls, names: list[str]) -> "Vocabulary":
        """Objects known by their names alone (no captions beyond the name, no families or themes)."""
        return cls(tuple(names), tuple(names), tuple((n,) for n in names))

    def __len__(self) -> int:
        return len(self.names)

    def family(self, k: int) -> str:
        """The name of object ``k``'s family (its own name if it has none)."""
        return next((f.name for f in self.families if k in f.members), self.names[k])

    def select(self, text: str) -> tuple[int, ...]:
        """Indices of the objects ``text`` selects (see the module doc); () if it
        names nothing known."""
        text_words = words(text)
        named = {k for k in range(len(self))
                 if any(_mentions(text_words, a) for a in (self.names[k], *self.aliases[k]))}
        for family in self.families:
            if family.named_in(text_words) and not named.intersection(family.members):
                named.update(family.members)
        if not named:
            named = {k for theme in self.themes if theme.named_in(text_words) for k in theme.members}
        return tuple(sorted(named))

    def describe(self) -> str:
        """One line of what can be asked for, by family and theme, e.g.
        "snowman, mushroom (or the theme 'a toy'); cactus (or …)"."""
        family_of = {k: f.name for f in self.families for k in f.members}

        def listing(members) -> str:
            return ", ".join(dict.fromkeys(family_of.get(k, self.names[k]) for k in members))

        parts = [f"{listing(theme.members)} (or the theme '{theme.name}')" for theme in self.themes]
        grouped = {k for theme in self.themes for k in theme.members}
        loose = [k for k in range(len(self)) if k not in grouped]
        if loose:
            parts.append(listing(loose))
        sizes = sorted({len(f.members) for f in self.families})
        text = "; ".join(parts)
        if sizes and sizes[-1] > 1:
            text += f" — each a family of {'–'.join(map(str, dict.fromkeys((sizes[0], sizes[-1]))))} variants"
        return text
