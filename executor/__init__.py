"""Running generated code: the bubblewrap sandbox, pass@k, the executor pool and HumanEval."""
