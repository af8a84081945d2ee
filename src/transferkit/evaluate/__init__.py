"""Reports of runs and studies, and the no-pretraining baselines."""
