"""The study end to end: `quickstart` (profiles.py, quickstart.py) and `plan` (plan.py)."""
