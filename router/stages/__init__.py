"""Pipeline stages, one per file, named for what they do."""
