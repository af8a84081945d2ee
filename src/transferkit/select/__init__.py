"""Choosing a backbone before training: transferability scores and the ranking of candidates."""

from .rank import DEFAULT_SCORE, Candidate, Ranking, default_candidates, rank

__all__ = ["DEFAULT_SCORE", "Candidate", "Ranking", "default_candidates", "rank"]
