"""Job task: pld score. Locally: python jobs/score.py --config conf/stereoset.yaml [--set key=value ...]"""
from pld_spark.jobs_entry import score

if __name__ == "__main__":
    score()
