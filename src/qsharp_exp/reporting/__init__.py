"""What runs report: a run's own summary and curves (summary.py), the stage directories it recorded (records.py),
and the tables and plots over many runs (tables.py)."""
