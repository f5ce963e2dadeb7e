"""pld_spark: Prompt-Level Distillation as an offline batch job on Spark.

Importing the package is cheap: no Spark session, Ray runtime or model is created at import.
"""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
