"""Natural-language inference: a (premise, hypothesis) pair in, entailment / neutral / contradiction out."""

from __future__ import annotations

from app.engine.tasks import Task

LABELS: tuple[str, str, str] = ("entailment", "neutral", "contradiction")

NLI = Task("nli", LABELS)
