"""Job task: pld select. Locally: python jobs/select.py --config conf/stereoset.yaml [--set key=value ...]"""
from pld_spark.jobs_entry import select

if __name__ == "__main__":
    select()
