"""The context a local worker's engine will have, for the commands that start one (``run``, ``eval --local``)."""

from __future__ import annotations

from collections.abc import Sequence

import click

from dscbatch.cli.submitting import key_values
from dscbatch.jobs.tokenizer import ModelTokenizer
from dscbatch.workers.context_fit import cpu_build_installed, fit_context


def local_context(model: str, engine_args: Sequence[str], max_model_len: int | None) -> int:
    """The context a local worker's engine will have (the one prompts are checked against), at most
    ``max_model_len``; says so where the model's own does not fit the KV cache, and raises ContextFitError where an
    asked-for ``max_model_len`` engine argument does not (before anything starts)."""
    tokenizer = ModelTokenizer.load(model)
    fit = fit_context(tokenizer.context_length, tokenizer.model_config, key_values(engine_args, "--engine-arg"),
                      cpu_build_installed())
    if fit.note is not None:
        click.echo(f"note: {fit.note}", err=True)
    return min(fit.max_model_len, max_model_len or fit.max_model_len)
