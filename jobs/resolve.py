"""Job task: pld resolve. Locally: python jobs/resolve.py --config conf/stereoset.yaml [--set key=value ...]"""
from pld_spark.jobs_entry import resolve

if __name__ == "__main__":
    resolve()
