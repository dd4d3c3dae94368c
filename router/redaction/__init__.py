"""Sensitive-data handling: normalise, detect, act (keep, drop, mask, hash, tokenize) and
rehydrate. Pure functions over text and JSON documents: no I/O, tested as functions."""
