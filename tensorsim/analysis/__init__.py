"""Reading runs back: run sets and their statistics, the report and its figures, the perspective space,
and the analysis of transcripts written by other tools. Reads outputs on disk; never imports the runner."""
