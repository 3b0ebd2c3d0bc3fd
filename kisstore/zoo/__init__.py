"""A controlled zoo: a seeded synthetic world of facts (and, later, a family of models trained on it)."""
