"""`python -m pipeline.tracking`: the Tracker's helper process (helper.py)."""

from pipeline.tracking.helper import main

main()
