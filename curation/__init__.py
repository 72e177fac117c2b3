"""``dscbatch curate``: dedup, decontamination, syntax and quality filters and fine-tuning export of results."""
