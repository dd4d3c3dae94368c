"""Local inference: the model repository, execution-provider choice, batching and the runner."""
