"""Reporting: the statistics across seeds, the figures, and the reports
(the comparison of the two variants, and the depth study's)."""
