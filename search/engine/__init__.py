"""What trains: the search (run, objective, workers), the baseline and retrain. Writes to the study,
never reads the report."""
