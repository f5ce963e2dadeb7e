"""Job task: pld evaluate. Locally: python jobs/evaluate.py --config conf/stereoset.yaml [--set key=value ...]"""
from pld_spark.jobs_entry import evaluate

if __name__ == "__main__":
    evaluate()
