#!/usr/bin/env bash
# Build .venv-spark35: the project on the Spark 3.5 line of the Databricks LTS runtimes (15.4, 16.4)
# with Spark NLP, whose jar for Spark 3.5 (com.johnsnowlabs.nlp:spark-nlp_2.12:5.5.3) is on Maven
# Central (the Spark 4 one is not). Used by `make test-spark35`; idempotent.
#
#   PySpark 3.5.x + delta-spark 3.3.2 (jar io.delta:delta-spark_2.12:3.3.2) + spark-nlp 5.5.3
#
# llama-cpp-python is not installed: the Spark tier runs no model. MLflow is (the LTS runtimes
# carry it), so the MLflow tests run on this leg too; pytest-xdist runs it on two workers.
set -euo pipefail
PY=${PY:-python3.11}
VENV=${VENV:-.venv-spark35}
STAMP=$VENV/.installed
PYSPARK=${PLD_PYSPARK35:-3.5.6}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
fi
if [ ! -f "$STAMP" ] || [ setup.py -nt "$STAMP" ] || [ "$0" -nt "$STAMP" ]; then
    echo "installing pld_spark on PySpark $PYSPARK + delta-spark 3.3.2 + spark-nlp 5.5.3 into $VENV" >&2
    "$VENV/bin/pip" install -q -e . "pyspark==$PYSPARK" "delta-spark==3.3.2" "spark-nlp==5.5.3" \
        "pytest>=8" "pytest-timeout>=2.3" "pytest-xdist>=3.6" "mlflow>=3.0"
    # resolve the Maven jars (Delta and Spark NLP) once, with retries
    "$VENV/bin/pld" setup --nlp --config conf/stereoset.yaml
    touch "$STAMP"
fi
echo "$VENV"
