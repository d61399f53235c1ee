"""The accuracy study as a small package: `tracks` (what is trained), `runs` (training, scoring and the
rows file), `statistics` (seeds as the unit; shared with scripts/select_budget.py) and `report`."""
