"""Reporting: the report comparing the two variants, the study and paper
summaries, their figures, and the document they are rendered as."""
