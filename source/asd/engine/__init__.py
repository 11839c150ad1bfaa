"""Train -> thresholds -> test, per machine type, in process or as Dask tasks."""
