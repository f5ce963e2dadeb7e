"""Watching prompts after distillation: compare two prompt versions on the same rows, diff their
rules, and monitor the drift of bulk scoring.

- :mod:`~pld_spark.monitor.stats`: the pure statistics (paired comparison of two prediction lists,
  PSI and chi-square of label distributions, nearest-neighbour input distance); no Spark, no model.
- :mod:`~pld_spark.monitor.diff`: the rule-level diff of two prompt versions (pure) and its loader.
- :mod:`~pld_spark.monitor.compare`: ``pld compare A B`` (stored predictions, or the student
  in-process for the missing rows) -> table ``comparisons`` and a report page.
- :mod:`~pld_spark.monitor.drift`: drift per scored day -> table ``drift_daily``; called by
  ``pld score`` after its predictions are stored, raises :class:`~pld_spark.errors.DriftDetected`.
"""
