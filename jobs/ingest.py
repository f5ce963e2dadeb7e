"""Job task: pld ingest. Locally: python jobs/ingest.py --config conf/stereoset.yaml [--set key=value ...]"""
from pld_spark.jobs_entry import ingest

if __name__ == "__main__":
    ingest()
