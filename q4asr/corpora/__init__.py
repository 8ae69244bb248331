"""Corpus preparation: what the recipes' own stages run before the template's
(downloads, synthesis, manifests of corpora that lhotse has no recipe for)."""
