"""Job task: pld cluster. Locally: python jobs/cluster.py --config conf/stereoset.yaml [--set key=value ...]"""
from pld_spark.jobs_entry import cluster

if __name__ == "__main__":
    cluster()
