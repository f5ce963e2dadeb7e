"""Job task: pld consolidate. Locally: python jobs/consolidate.py --config conf/stereoset.yaml [--set key=value ...]"""
from pld_spark.jobs_entry import consolidate

if __name__ == "__main__":
    consolidate()
