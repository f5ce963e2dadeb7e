"""Job task: pld extract. Locally: python jobs/extract.py --config conf/stereoset.yaml [--set key=value ...]"""
from pld_spark.jobs_entry import extract

if __name__ == "__main__":
    extract()
